#!/usr/bin/python3
"""Every metric that a dashboard panel or a rule names exists on a live 2-rank job.

    metrics_exist_test.py BIN_DIR DASHBOARD_DIR RULE_FILE...

Runs came-launch --nproc 2 --metrics-port P with the C++ example trainer, waits until both
ranks have stepped, scrapes the coordinator (P) and both rankd (P+1, P+2), and fails naming
every metric that deploy/grafana's dashboards or the rule files ask for and no scrape
exposes. The name extraction (promql_names.py) is tested first on known expressions.
"""

import glob
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import unittest
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import promql_names  # noqa: E402

BIN_DIR = DASHBOARD_DIR = None
RULE_FILES = []


class ExprNamesTest(unittest.TestCase):
    def test_selectors_functions_and_modifiers(self):
        self.assertEqual(
            promql_names.expr_names(
                'histogram_quantile(0.9, sum by (le) (rate(a_bucket{rank=~"$rank"}'
                '[$__rate_interval] offset 5m))) / ignoring(phase) group_left b_total * 1e-3'
                ' and on() c{state="RUNNING", x="by(y)"} > bool 2'),
            {"a_bucket", "b_total", "c"})

    def test_name_matcher_and_recording_rule_names(self):
        self.assertEqual(promql_names.expr_names('{__name__="d_seconds"} + job:e:rate5m'),
                         {"d_seconds", "job:e:rate5m"})

    def test_recording_rules_resolve_to_scraped_names(self):
        with tempfile.TemporaryDirectory() as d:
            rules = os.path.join(d, "rules.yml")
            with open(rules, "w") as f:
                f.write("groups:\n- name: g\n  rules:\n"
                        "  - record: x:y:rate5m\n    expr: rate(y_total[5m])\n"
                        "  - alert: A\n    expr: x:y:rate5m > 1 and up == 0\n")
            self.assertEqual(set(promql_names.required_names([], [rules])), {"y_total"})

    def test_exposition_names(self):
        self.assertEqual(promql_names.exposed_names(
            '# HELP a x\n# TYPE a counter\na{rank="0"} 1\nb_bucket{le="1"} 2\nc 3\n'),
            {"a", "b_bucket", "c"})


def _free_base(n):
    for base in range(21000, 60000, 11):
        socks = []
        try:
            for k in range(n):
                s = socket.socket()
                s.bind(("127.0.0.1", base + k))
                socks.append(s)
            return base
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise RuntimeError("no %d free consecutive ports" % n)


def _scrape(port):
    with urllib.request.urlopen("http://127.0.0.1:%d/metrics" % port, timeout=2) as r:
        return r.read().decode()


class LiveJobTest(unittest.TestCase):
    def test_every_named_metric_is_exposed(self):
        dashboards = sorted(glob.glob(os.path.join(DASHBOARD_DIR, "*.json")))
        self.assertTrue(dashboards, "no dashboard under %s" % DASHBOARD_DIR)
        required = promql_names.required_names(dashboards, RULE_FILES)
        self.assertGreater(len(required), 10)

        port = _free_base(3)
        with tempfile.TemporaryFile() as log:
            job = subprocess.Popen(
                [os.path.join(BIN_DIR, "came-launch"), "--nproc", "2", "--metrics-port",
                 str(port), "--", os.path.join(BIN_DIR, "came-cpp-trainer"), "--steps",
                 "100000"], stdout=log, stderr=subprocess.STDOUT)
            try:
                stepped, missing = self._scrape_until_complete(job, port, required)
            finally:
                job.send_signal(signal.SIGINT)
                try:
                    job.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    job.kill()
                    job.wait()
            if not stepped:
                log.seek(0)
                self.fail("the job's ranks never stepped; came-launch said:\n"
                          + log.read().decode(errors="replace")[-3000:])
        self.assertFalse(missing, "named by a dashboard or rule but not on /metrics:\n" + "\n".join(
            "  %s (used in %s)" % (n, "; ".join(w)) for n, w in sorted(missing.items())))

    def _scrape_until_complete(self, job, port, required):
        """Scrapes the coordinator and both rankd until both ranks have stepped and every
        required name is exposed, for at most 90 s. Returns (stepped, {missing name: uses})."""
        deadline = time.monotonic() + 90
        stepped, missing = False, dict(required)
        while time.monotonic() < deadline and job.poll() is None:
            time.sleep(0.5)
            try:
                texts = [_scrape(port + k) for k in range(3)]
            except OSError:
                continue
            stepped = all(any(l.startswith("came_steps_total{") and not l.endswith(" 0")
                              for l in t.splitlines()) for t in texts[1:])
            exposed = set().union(*(promql_names.exposed_names(t) for t in texts))
            missing = {n: w for n, w in required.items() if n not in exposed}
            if stepped and not missing:
                break
        return stepped, missing


if __name__ == "__main__":
    BIN_DIR, DASHBOARD_DIR, RULE_FILES = sys.argv[1], sys.argv[2], sys.argv[3:]
    unittest.main(argv=sys.argv[:1], verbosity=2)
