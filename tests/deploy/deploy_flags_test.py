#!/usr/bin/python3
"""Every flag that docker-compose.yml and deploy/k8s pass to the binaries exists.

    deploy_flags_test.py BIN_DIR REPO_DIR

Collects the command lines of came-coordinator and came-rankd in docker-compose.yml (every
profile) and in deploy/k8s/*.yaml (came-rank-pod's flags before `--` are came-rankd's),
and fails naming each flag the binary's --helpfull does not list. Values are not checked
(compose and Kubernetes substitute them), only the names.
"""

import glob
import os
import re
import subprocess
import sys
import unittest

import yaml

BIN_DIR = REPO_DIR = None
_BINARY_OF = {"came-coordinator": "came-coordinator", "came-rankd": "came-rankd",
              "came-rank-pod": "came-rankd"}


def known_flags(binary):
    """Returns the flag names (with underscores) that `binary --helpfull` lists."""
    out = subprocess.run([os.path.join(BIN_DIR, binary), "--helpfull"], capture_output=True,
                         text=True, timeout=30)
    return set(re.findall(r"^\s+--([a-z0-9_]+) \(", out.stdout + out.stderr, re.M))


def command_lines():
    """Yields (where, binary, [flag names]) for every command line of the deploy files."""
    with open(os.path.join(REPO_DIR, "docker-compose.yml")) as f:
        compose = yaml.safe_load(f)
    for name, service in compose["services"].items():
        yield "docker-compose.yml service %s" % name, service.get("command") or []
    for path in sorted(glob.glob(os.path.join(REPO_DIR, "deploy", "k8s", "*.yaml"))):
        with open(path) as f:
            for doc in yaml.safe_load_all(f):
                spec = (doc or {}).get("spec", {}).get("template", {}).get("spec", {})
                for c in spec.get("containers", []):
                    yield ("%s container %s" % (os.path.relpath(path, REPO_DIR), c["name"]),
                           c.get("args") or c.get("command") or [])


def flags_of(argv):
    """Returns (binary, [flag names]) of a came command line, or (None, [])."""
    if not argv or argv[0] not in _BINARY_OF:
        return None, []
    args = argv[1:]
    if "--" in args:
        args = args[:args.index("--")]
    return _BINARY_OF[argv[0]], [a[2:].split("=", 1)[0].replace("-", "_")
                                 for a in args if a.startswith("--")]


class DeployFlagsTest(unittest.TestCase):
    def test_every_flag_exists(self):
        known = {b: known_flags(b) for b in set(_BINARY_OF.values())}
        for b, flags in known.items():
            self.assertIn("token_file", flags, "%s --helpfull lists no flags" % b)
        checked, unknown = 0, []
        for where, argv in command_lines():
            binary, flags = flags_of(argv)
            for f in flags:
                checked += 1
                if f not in known[binary]:
                    unknown.append("%s: %s has no --%s" % (where, binary, f.replace("_", "-")))
        self.assertGreater(checked, 20)
        self.assertFalse(unknown, "\n".join(unknown))

    def test_flags_of(self):
        self.assertEqual(flags_of(["came-rank-pod", "--rank=0", "--listen=x:1", "--", "t",
                                   "--steps=3"]), ("came-rankd", ["rank", "listen"]))
        self.assertEqual(flags_of(["sh", "-c", "x"]), (None, []))


if __name__ == "__main__":
    BIN_DIR, REPO_DIR = sys.argv[1], sys.argv[2]
    unittest.main(argv=sys.argv[:1], verbosity=2)
