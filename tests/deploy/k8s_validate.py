#!/usr/bin/python3
"""Validates the Kubernetes base deploy/k8s offline.

    k8s_validate.py K8S_DIR [KUBERNETES_VERSION]

Renders the base (`kubectl kustomize` on a copy with a made-up token when kubectl is
there; otherwise the resources and the secret generator of kustomization.yaml by hand,
after checking that it lists every manifest of the folder), validates every object
against the Kubernetes JSON schemas of that version (kubernetes-validate, strict: no
unknown fields), and checks what the schemas cannot: Services select the pods they serve,
the StatefulSet's Service is headless, every container requests CPU and memory and has
liveness and readiness probes, every rank has one GPU, the Secret the pods mount is the
one rendered, pods carry scrape annotations, and the coordinator's --world-size matches the
ranks.
"""

import base64
import glob
import os
import re
import shutil
import subprocess
import sys
import tempfile
import unittest

import kubernetes_validate
import yaml

K8S_DIR = None
VERSION = "1.30.0"


def render_with_kubectl(k8s_dir):
    with tempfile.TemporaryDirectory() as d:
        base = os.path.join(d, "base")
        shutil.copytree(k8s_dir, base)
        with open(os.path.join(base, "token"), "w") as f:
            f.write("test-token\n")
        out = subprocess.run(["kubectl", "kustomize", base], check=True, capture_output=True,
                             text=True).stdout
    return [d for d in yaml.safe_load_all(out) if d]


def render_by_hand(k8s_dir):
    """Returns the objects of the base's resources and secret generator, with its labels."""
    with open(os.path.join(k8s_dir, "kustomization.yaml")) as f:
        kust = yaml.safe_load(f)
    listed = set(kust.get("resources", []))
    present = {os.path.basename(p) for p in glob.glob(os.path.join(k8s_dir, "*.yaml"))}
    present.discard("kustomization.yaml")
    if listed != present:
        raise AssertionError("kustomization.yaml resources %s != manifests in %s: %s"
                             % (sorted(listed), k8s_dir, sorted(present)))
    docs = []
    for name in kust["resources"]:
        with open(os.path.join(k8s_dir, name)) as f:
            docs.extend(d for d in yaml.safe_load_all(f) if d)
    for gen in kust.get("secretGenerator", []):
        data = {os.path.basename(f): base64.b64encode(b"test-token\n").decode()
                for f in gen.get("files", [])}
        docs.append({"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
                     "metadata": {"name": gen["name"]}, "data": data})
    for spec in kust.get("labels", []):
        for d in docs:
            d["metadata"].setdefault("labels", {}).update(spec["pairs"])
    return docs


def render(k8s_dir):
    if shutil.which("kubectl"):
        return render_with_kubectl(k8s_dir), "kubectl kustomize"
    return render_by_hand(k8s_dir), "kustomization.yaml read by hand (no kubectl)"


def by_kind(docs, kind):
    return [d for d in docs if d["kind"] == kind]


def flag(args, name):
    """Returns the value of --name=V in a container's args, or None."""
    for a in args:
        if a.startswith("--%s=" % name):
            return a.split("=", 1)[1]
    return None


class K8sBaseTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.docs, cls.how = render(K8S_DIR)
        print("rendered %d objects with %s" % (len(cls.docs), cls.how))

    def test_every_object_validates_against_the_schemas(self):
        for d in self.docs:
            with self.subTest(kind=d["kind"], name=d["metadata"]["name"]):
                try:
                    kubernetes_validate.validate(d, VERSION, strict=True)
                except kubernetes_validate.ValidationError as e:
                    self.fail("%s/%s: %s: %s" % (d["kind"], d["metadata"]["name"],
                                                 ".".join(map(str, e.path)), e.message))

    def test_the_objects_of_the_job_are_there(self):
        # kustomize names a generated Secret name-<hash>
        kinds = sorted((d["kind"], re.sub(r"-[a-z0-9]{10}$", "", d["metadata"]["name"])
                        if d["kind"] == "Secret" else d["metadata"]["name"]) for d in self.docs)
        self.assertEqual(kinds, [("Deployment", "came-coordinator"), ("Secret", "came-token"),
                                 ("Service", "came-coordinator"), ("Service", "came-rank"),
                                 ("StatefulSet", "came-rank")])

    def test_services_select_their_pods_and_the_rank_service_is_headless(self):
        services = {s["metadata"]["name"]: s for s in by_kind(self.docs, "Service")}
        for w in by_kind(self.docs, "Deployment") + by_kind(self.docs, "StatefulSet"):
            labels = w["spec"]["template"]["metadata"]["labels"]
            self.assertLessEqual(w["spec"]["selector"]["matchLabels"].items(), labels.items())
            svc = services[w["metadata"]["name"]]
            self.assertLessEqual(svc["spec"]["selector"].items(), labels.items())
            ports = {p["name"] for c in w["spec"]["template"]["spec"]["containers"]
                     for p in c.get("ports", [])}
            for p in svc["spec"]["ports"]:
                self.assertIn(p["targetPort"], ports)
        sts = by_kind(self.docs, "StatefulSet")[0]
        headless = services[sts["spec"]["serviceName"]]
        self.assertEqual(headless["spec"]["clusterIP"], "None")
        self.assertTrue(headless["spec"]["publishNotReadyAddresses"])

    def test_containers_request_resources_and_have_health_probes(self):
        for w in by_kind(self.docs, "Deployment") + by_kind(self.docs, "StatefulSet"):
            pod = w["spec"]["template"]
            self.assertEqual(pod["metadata"]["annotations"]["prometheus.io/scrape"], "true")
            for c in pod["spec"]["containers"]:
                with self.subTest(workload=w["metadata"]["name"], container=c["name"]):
                    self.assertIn("cpu", c["resources"]["requests"])
                    self.assertIn("memory", c["resources"]["requests"])
                    grpc_port = next(p["containerPort"] for p in c["ports"] if p["name"] == "grpc")
                    for probe in ("livenessProbe", "readinessProbe"):
                        self.assertEqual(c[probe]["grpc"]["port"], grpc_port)
                    metrics = next(p["containerPort"] for p in c["ports"] if p["name"] == "metrics")
                    self.assertEqual(pod["metadata"]["annotations"]["prometheus.io/port"],
                                     str(metrics))
                    self.assertEqual(flag(c["args"], "metrics-port"), str(metrics))

    def test_every_rank_has_one_gpu_and_the_world_size_matches(self):
        sts = by_kind(self.docs, "StatefulSet")[0]
        (rank,) = sts["spec"]["template"]["spec"]["containers"]
        self.assertEqual(str(rank["resources"]["limits"]["nvidia.com/gpu"]), "1")
        replicas = str(sts["spec"]["replicas"])
        (coord,) = by_kind(self.docs, "Deployment")[0]["spec"]["template"]["spec"]["containers"]
        self.assertEqual(flag(coord["args"], "world-size"), replicas)
        self.assertEqual(flag(rank["args"], "world-size"), replicas)
        env = {e["name"]: e.get("value") for e in rank["env"]}
        self.assertEqual(env["CAME_WORLD_SIZE"], replicas)
        self.assertEqual(flag(rank["args"], "coordinator"), "came-coordinator:%d" % next(
            p["port"] for s in by_kind(self.docs, "Service")
            if s["metadata"]["name"] == "came-coordinator"
            for p in s["spec"]["ports"] if p["name"] == "grpc"))

    def test_pods_mount_the_rendered_token_secret(self):
        (secret,) = by_kind(self.docs, "Secret")
        for w in by_kind(self.docs, "Deployment") + by_kind(self.docs, "StatefulSet"):
            spec = w["spec"]["template"]["spec"]
            mounted = [v["secret"]["secretName"] for v in spec["volumes"] if "secret" in v]
            self.assertEqual(mounted, [secret["metadata"]["name"]])
            for c in spec["containers"]:
                self.assertEqual(flag(c["args"], "token-file"), "/etc/came/token")
                self.assertIn("/etc/came", [m["mountPath"] for m in c["volumeMounts"]])


if __name__ == "__main__":
    K8S_DIR = sys.argv[1]
    if len(sys.argv) > 2:
        VERSION = sys.argv[2]
    unittest.main(argv=sys.argv[:1], verbosity=2)
