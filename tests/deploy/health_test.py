#!/usr/bin/python3
"""The servers' health checks and the one-container rank of the Kubernetes pods.

    health_test.py BIN_DIR DOCKER_DIR

came-coordinator and came-rankd answer the standard gRPC health check (what Kubernetes'
grpc probes and deploy/docker/came-healthcheck ask) once they serve; a closed port does
not. deploy/docker/came-rank-pod runs came-rankd and a trainer and exits with the
trainer's status, stopping rankd; when the trainer or rankd fails it stops the other.
"""

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import unittest

BIN_DIR = DOCKER_DIR = None


def healthcheck(*args, timeout=60):
    return subprocess.run([sys.executable, os.path.join(DOCKER_DIR, "came-healthcheck"),
                           *args], capture_output=True, text=True, timeout=timeout)


class Job:
    """A came-coordinator for a job of one rank, on a free port."""

    def __init__(self, token_file):
        self.proc = subprocess.Popen(
            [os.path.join(BIN_DIR, "came-coordinator"), "--listen=127.0.0.1:0",
             "--world-size=1", "--token-file=" + token_file, "--lease-seconds=5"],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        line = self.proc.stdout.readline()
        if "listening on " not in line:
            raise RuntimeError("came-coordinator did not start: %r" % line)
        self.address = line.split("listening on ")[1].strip()

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=20)


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def stop(proc):
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class HealthTest(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.TemporaryDirectory()
        self.token = os.path.join(self.dir.name, "token")
        with open(self.token, "w") as f:
            f.write("health-test-token\n")
        self.job = Job(self.token)
        self.addCleanup(self.dir.cleanup)
        self.addCleanup(self.job.stop)

    def rankd(self, extra=()):
        proc = subprocess.Popen(
            [os.path.join(BIN_DIR, "came-rankd"), "--coordinator=" + self.job.address,
             "--token-file=" + self.token, "--listen=127.0.0.1:0", *extra],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        self.addCleanup(stop, proc)
        line = proc.stdout.readline()
        self.assertIn("listening on ", line)
        return proc, line.split("listening on ")[1].strip()

    def test_coordinator_and_rankd_serve_the_health_service(self):
        r = healthcheck(self.job.address)
        self.assertEqual(r.returncode, 0, r.stderr)
        _, address = self.rankd()
        r = healthcheck(address)
        self.assertEqual(r.returncode, 0, r.stderr)
        # A server that does not know the named service says so (NOT_FOUND).
        r = healthcheck("--service", "no.such.Service", address)
        self.assertEqual(r.returncode, 1)
        self.assertIn("NOT_FOUND", r.stderr)

    def test_a_closed_port_is_not_serving_and_wait_gives_up(self):
        port = self.job.address.rsplit(":", 1)[1]
        self.job.stop()
        self.job.proc.wait()
        start = time.monotonic()
        r = healthcheck("--wait", "1", "127.0.0.1:" + port)
        self.assertEqual(r.returncode, 1)
        self.assertIn("is not serving (UNAVAILABLE", r.stderr)
        self.assertGreaterEqual(time.monotonic() - start, 1.0)
        self.job = Job(self.token)  # for the cleanup

    def test_runs_the_command_once_serving(self):
        r = healthcheck("--wait", "10", self.job.address, "--", "sh", "-c", "echo ran; exit 3")
        self.assertEqual((r.returncode, r.stdout), (3, "ran\n"))


class RankPodTest(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.TemporaryDirectory()
        self.addCleanup(self.dir.cleanup)
        self.token = os.path.join(self.dir.name, "token")
        with open(self.token, "w") as f:
            f.write("rank-pod-token\n")
        self.job = Job(self.token)
        self.addCleanup(self.job.stop)
        self.env = dict(os.environ, PATH=os.pathsep.join([BIN_DIR, DOCKER_DIR, os.environ["PATH"]]),
                        CAME_RANK="0", CAME_WORLD_SIZE="1", CAME_TOKEN="rank-pod-token")

    def rank_pod(self, rankd_flags, trainer):
        # rankd listens on a known free port, so the trainer knows where to find it
        port = free_port()
        env = dict(self.env, CAME_RANKD_ADDRESS="127.0.0.1:%d" % port)
        return subprocess.run(
            [os.path.join(DOCKER_DIR, "came-rank-pod"), "--coordinator=" + self.job.address,
             "--listen=127.0.0.1:%d" % port, *rankd_flags, "--", *trainer],
            env=env, capture_output=True, text=True, timeout=120)

    def test_a_trainer_that_finishes_stops_rankd_and_exits_0(self):
        r = self.rank_pod(["--token-file=" + self.token],
                          [os.path.join(BIN_DIR, "came-cpp-trainer"), "--steps", "5"])
        self.assertEqual(r.returncode, 0, r.stderr[-2000:])
        self.assertIn("came-rankd rank 0: stopping", r.stderr)

    def test_a_failing_trainer_fails_the_pod_and_stops_rankd(self):
        r = self.rank_pod(["--token-file=" + self.token], ["sh", "-c", "sleep 1; exit 5"])
        self.assertEqual(r.returncode, 5, r.stderr[-2000:])
        self.assertIn("the trainer exited with 5", r.stderr)

    def test_a_rankd_that_cannot_join_fails_before_the_trainer_starts(self):
        bad = os.path.join(self.dir.name, "bad-token")
        with open(bad, "w") as f:
            f.write("not-the-token\n")
        start = time.monotonic()
        r = self.rank_pod(["--token-file=" + bad], ["sleep", "60"])
        self.assertNotEqual(r.returncode, 0)
        self.assertIn("came-rankd exited with 1 before serving", r.stderr)
        self.assertLess(time.monotonic() - start, 30)

    def test_a_rankd_that_dies_stops_the_running_trainer(self):
        port = free_port()
        pod = subprocess.Popen(
            [os.path.join(DOCKER_DIR, "came-rank-pod"), "--coordinator=" + self.job.address,
             "--listen=127.0.0.1:%d" % port, "--token-file=" + self.token, "--", "sleep", "60"],
            env=dict(self.env, CAME_RANKD_ADDRESS="127.0.0.1:%d" % port),
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        self.addCleanup(stop, pod)

        def child(name):
            r = subprocess.run(["pgrep", "-P", str(pod.pid), "-x", name],
                               capture_output=True, text=True)
            return int(r.stdout.split()[0]) if r.returncode == 0 else None

        deadline = time.monotonic() + 60
        while child("sleep") is None:  # the trainer starts once rankd serves
            self.assertLess(time.monotonic(), deadline, "the trainer never started")
            time.sleep(0.2)
        start = time.monotonic()
        os.kill(child("came-rankd"), signal.SIGKILL)
        _, err = pod.communicate(timeout=30)
        self.assertEqual(pod.returncode, 128 + signal.SIGKILL, err)
        self.assertIn("came-rankd exited with 137; stopping the trainer", err)
        self.assertLess(time.monotonic() - start, 20)

    def test_usage(self):
        r = subprocess.run([os.path.join(DOCKER_DIR, "came-rank-pod"), "--rank=0"],
                           capture_output=True, text=True)
        self.assertEqual(r.returncode, 2)
        self.assertIn("usage:", r.stderr)


if __name__ == "__main__":
    BIN_DIR, DOCKER_DIR = sys.argv[1], sys.argv[2]
    unittest.main(argv=sys.argv[:1], verbosity=2)
