"""The Python client reaches a came-rankd that serves over TLS (--tls-cert/--tls-key) when given
its CA (RankClient(..., tls_ca=PEM file)); a plaintext client does not get through.

Needs CAME_BIN_DIR (the folder of came-coordinator and came-rankd) and the openssl CLI.
"""

import os
import shutil
import subprocess
import tempfile
import time
import unittest

import grpc

from came.errors import CameError
from came.rank_client import RankClient


def _wait_for_line(proc, marker, timeout):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if marker in line:
            return line.strip()
        if not line and proc.poll() is not None:
            break
    raise AssertionError("no %r line; stderr: %s" % (marker, proc.stderr.read()))


@unittest.skipIf(shutil.which("openssl") is None, "the openssl CLI is not installed")
class RankClientTlsTest(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="came-pytls-")
        self.cert = os.path.join(self.dir, "cert.pem")
        key = os.path.join(self.dir, "key.pem")
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                        "-subj", "/CN=localhost", "-addext",
                        "subjectAltName=DNS:localhost,IP:127.0.0.1", "-keyout", key, "-out",
                        self.cert], check=True, capture_output=True)
        token = os.path.join(self.dir, "token")
        with open(token, "w") as f:
            f.write("py-tls-token\n")
        bin_dir = os.environ["CAME_BIN_DIR"]
        self.procs = []
        coordinator = self._start([os.path.join(bin_dir, "came-coordinator"), "--world-size", "1",
                                   "--token-file", token])
        address = _wait_for_line(coordinator, "listening on", 30).rsplit(" ", 1)[1]
        rankd = self._start([os.path.join(bin_dir, "came-rankd"), "--coordinator", address,
                             "--token-file", token, "--tls-cert", self.cert, "--tls-key", key])
        self.rankd = "127.0.0.1:" + _wait_for_line(rankd, "listening on", 30).rsplit(":", 1)[1]

    def _start(self, argv):
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.procs.append(proc)
        return proc

    def tearDown(self):
        for p in reversed(self.procs):
            p.kill()
            p.wait()
            p.stdout.close()
            p.stderr.close()
        shutil.rmtree(self.dir)

    def test_tls_client_reaches_rankd_and_plaintext_does_not(self):
        client = RankClient(self.rankd, "py-tls-token", timeout=10, tls_ca=self.cert)
        with self.assertRaises(CameError) as ctx:  # rankd's own answer: it got through
            client.sync_parameters("no-such-attachment")
        self.assertEqual(ctx.exception.code, grpc.StatusCode.FAILED_PRECONDITION)
        client.close()
        plain = RankClient(self.rankd, "py-tls-token", timeout=3)
        with self.assertRaises(CameError) as ctx:
            plain.sync_parameters("no-such-attachment")
        self.assertEqual(ctx.exception.code, grpc.StatusCode.UNAVAILABLE)
        plain.close()


if __name__ == "__main__":
    unittest.main()
