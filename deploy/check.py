#!/usr/bin/env python3
"""Checks the deployment material in deploy/ (run by tests/tests/deploy_manifests.rs).

Usage: deploy/check.py [DEPLOY_DIR]

Kubernetes (DEPLOY_DIR/k8s/*.yaml): every document parses, names a kind and a namespace; the
embedded TOML configuration files parse; and the process boundary holds:
  - the signer is a StatefulSet with exactly one replica;
  - every Service selecting signer pods is headless and a NetworkPolicy admits only core pods
    to them (no namespaceSelector, no ipBlock, no empty `from`), and no policy lets edge pods
    send to signer pods; a namespace-wide default-deny exists;
  - edges and cores are Deployments; the HPA targets the edge Deployment, which leaves the
    replica count to it; the edge has a PodDisruptionBudget;
  - edge probes use the admin port's /healthz and /readyz, on the port edge.toml listens on;
  - every container runs as non-root, without privilege escalation, read-only root filesystem.
systemd (DEPLOY_DIR/systemd/*.service): hardening directives present; the signer has no network;
`systemd-analyze verify` finds nothing but the binaries missing on this machine (if installed).

Prints one line per violation and exits 1 if there is any.
"""

import glob
import os
import shutil
import subprocess
import sys
import tomllib

import yaml

errors = []


def fail(msg):
    errors.append(msg)


def selects(selector, labels):
    """Whether a label selector (matchLabels / matchExpressions, or a plain map) selects labels."""
    if selector is None:
        return False
    if "matchLabels" not in selector and "matchExpressions" not in selector:
        return all(labels.get(k) == v for k, v in selector.items())
    for k, v in (selector.get("matchLabels") or {}).items():
        if labels.get(k) != v:
            return False
    for e in selector.get("matchExpressions") or []:
        op, key, values = e["operator"], e["key"], e.get("values", [])
        if op == "In" and labels.get(key) not in values:
            return False
        if op == "NotIn" and labels.get(key) in values:
            return False
        if op == "Exists" and key not in labels:
            return False
        if op == "DoesNotExist" and key in labels:
            return False
    return True


def load(k8s_dir):
    docs = []
    for path in sorted(glob.glob(os.path.join(k8s_dir, "*.yaml"))):
        with open(path) as f:
            try:
                for d in yaml.safe_load_all(f):
                    if d is not None:
                        docs.append((os.path.basename(path), d))
            except yaml.YAMLError as e:
                fail(f"{path}: YAML: {e}")
    return docs


def check_k8s(k8s_dir):
    docs = load(k8s_dir)
    if not docs:
        fail(f"{k8s_dir}: no manifests")
        return
    objs = []
    for name, d in docs:
        for key in ("apiVersion", "kind"):
            if key not in d:
                fail(f"{name}: a document without {key}")
        kind = d.get("kind")
        meta = d.get("metadata") or {}
        if kind not in ("Kustomization",) and not meta.get("name"):
            fail(f"{name}: {kind} without metadata.name")
        if kind not in ("Namespace", "Kustomization") and meta.get("namespace") != "certgate":
            fail(f"{name}: {kind}/{meta.get('name')} not in namespace certgate")
        if name.endswith(".example.yaml"):
            continue  # templates, not applied
        objs.append((name, d))

    def of_kind(kind):
        return [d for _, d in objs if d.get("kind") == kind]

    workloads = {
        d["metadata"]["name"]: d for d in of_kind("Deployment") + of_kind("StatefulSet")
    }
    pod_labels = {
        n: w["spec"]["template"]["metadata"].get("labels", {}) for n, w in workloads.items()
    }
    for n, w in workloads.items():
        if not selects(w["spec"]["selector"], pod_labels[n]):
            fail(f"{n}: selector does not select its own pod template")

    signer = workloads.get("certgate-signer")
    core = workloads.get("certgate-core")
    edge = workloads.get("certgate-edge")
    if signer is None or signer["kind"] != "StatefulSet":
        fail("certgate-signer must be a StatefulSet")
    elif signer["spec"].get("replicas") != 1:
        fail("certgate-signer must have exactly 1 replica")
    for n, w in (("certgate-core", core), ("certgate-edge", edge)):
        if w is None or w["kind"] != "Deployment":
            fail(f"{n} must be a Deployment")
    if signer is None or core is None or edge is None:
        return
    signer_l, core_l, edge_l = (pod_labels[n] for n in ("certgate-signer", "certgate-core", "certgate-edge"))

    # ConfigMaps: the embedded TOML parses.
    configs = {}
    for cm in of_kind("ConfigMap"):
        for key, text in (cm.get("data") or {}).items():
            if key.endswith(".toml"):
                try:
                    configs[key] = tomllib.loads(text)
                except tomllib.TOMLDecodeError as e:
                    fail(f"ConfigMap {cm['metadata']['name']} {key}: TOML: {e}")

    # Network boundary.
    policies = of_kind("NetworkPolicy")
    if not any(
        p["spec"].get("podSelector") == {} and set(p["spec"].get("policyTypes", [])) >= {"Ingress", "Egress"}
        and not p["spec"].get("ingress") and not p["spec"].get("egress")
        for p in policies
    ):
        fail("no namespace-wide default-deny NetworkPolicy (Ingress and Egress)")
    signer_ingress_ok = False
    for p in policies:
        spec = p["spec"]
        name = p["metadata"]["name"]
        if selects(spec.get("podSelector"), signer_l):
            for rule in spec.get("ingress") or []:
                peers = rule.get("from")
                if not peers:
                    fail(f"NetworkPolicy {name}: admits anyone to the signer")
                    continue
                for peer in peers:
                    if "ipBlock" in peer or "namespaceSelector" in peer:
                        fail(f"NetworkPolicy {name}: admits other than core pods to the signer")
                    elif not selects(peer.get("podSelector"), core_l) or selects(
                        peer.get("podSelector"), edge_l
                    ):
                        fail(f"NetworkPolicy {name}: admits non-core pods to the signer")
                    else:
                        signer_ingress_ok = True
            if "Egress" in spec.get("policyTypes", []) and spec.get("egress"):
                fail(f"NetworkPolicy {name}: the signer needs no egress")
        if selects(spec.get("podSelector"), edge_l):
            for rule in spec.get("egress") or []:
                for peer in rule.get("to") or [{}]:
                    if "ipBlock" in peer or peer == {}:
                        fail(f"NetworkPolicy {name}: edges may send anywhere")
                    elif selects(peer.get("podSelector"), signer_l):
                        fail(f"NetworkPolicy {name}: edges may reach the signer")
    for svc in of_kind("Service"):
        sel = svc["spec"].get("selector")
        if selects(sel, signer_l):
            n = svc["metadata"]["name"]
            if svc["spec"].get("clusterIP") != "None" or svc["spec"].get("type", "ClusterIP") != "ClusterIP":
                fail(f"Service {n} exposes the signer beyond a headless name")
            if not signer_ingress_ok:
                fail(f"Service {n} selects the signer but no NetworkPolicy restricts it to core pods")
        if selects(sel, signer_l) and selects(sel, edge_l):
            fail(f"Service {svc['metadata']['name']} mixes edge and signer pods")

    # Edge scaling and availability.
    hpas = [
        h for h in of_kind("HorizontalPodAutoscaler")
        if h["spec"]["scaleTargetRef"].get("kind") == "Deployment"
        and h["spec"]["scaleTargetRef"].get("name") == "certgate-edge"
    ]
    if not hpas:
        fail("no HorizontalPodAutoscaler targets Deployment certgate-edge")
    if "replicas" in edge["spec"]:
        fail("certgate-edge sets replicas although the HPA owns them")
    if not any(selects(p["spec"].get("selector"), edge_l) for p in of_kind("PodDisruptionBudget")):
        fail("no PodDisruptionBudget for the edges")

    # Probes on the admin port, the port edge.toml listens on.
    admin = (configs.get("edge.toml", {}).get("listen", {}).get("admin") or ":").rsplit(":", 1)[1]
    c = edge["spec"]["template"]["spec"]["containers"][0]
    ports = {p.get("name"): p["containerPort"] for p in c.get("ports", [])}
    for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
        get = (c.get(probe) or {}).get("httpGet") or {}
        port = get.get("port")
        port = ports.get(port, port)
        if get.get("path") != path or str(port) != admin:
            fail(f"edge {probe} must GET {path} on the admin port {admin} (edge.toml)")

    # Container hardening.
    for n, w in workloads.items():
        spec = w["spec"]["template"]["spec"]
        if not (spec.get("securityContext") or {}).get("runAsNonRoot"):
            fail(f"{n}: pod without runAsNonRoot")
        if spec.get("automountServiceAccountToken") is not False:
            fail(f"{n}: mounts a service account token")
        for ctr in spec.get("containers", []) + spec.get("initContainers", []):
            sc = ctr.get("securityContext") or {}
            if sc.get("allowPrivilegeEscalation") is not False or not sc.get("readOnlyRootFilesystem"):
                fail(f"{n}/{ctr['name']}: privilege escalation or writable root filesystem")
            if "ALL" not in ((sc.get("capabilities") or {}).get("drop") or []):
                fail(f"{n}/{ctr['name']}: capabilities not dropped")


REQUIRED = [
    "NoNewPrivileges=yes",
    "ProtectSystem=strict",
    "MemoryDenyWriteExecute=yes",
    "PrivateTmp=yes",
    "ProtectHome=yes",
    "LimitNOFILE=",
    "UMask=0077",
]


def check_systemd(unit_dir):
    units = sorted(glob.glob(os.path.join(unit_dir, "*.service")))
    names = {os.path.basename(u) for u in units}
    for want in ("certgate-signer.service", "certgate-core.service", "certgate-edge.service"):
        if want not in names:
            fail(f"{unit_dir}: {want} missing")
    for u in units:
        text = open(u).read()
        lines = [l.strip() for l in text.splitlines() if l.strip() and not l.startswith("#")]
        for r in REQUIRED:
            if not any(l.startswith(r) for l in lines):
                fail(f"{os.path.basename(u)}: no {r}")
        if any(l.startswith("User=root") for l in lines) or not any(l.startswith("User=") for l in lines):
            fail(f"{os.path.basename(u)}: must run as its own non-root user")
    signer = os.path.join(unit_dir, "certgate-signer.service")
    if os.path.exists(signer):
        lines = [l.strip() for l in open(signer).read().splitlines()]
        if "PrivateNetwork=yes" not in lines or "RestrictAddressFamilies=AF_UNIX" not in lines:
            fail("certgate-signer.service: must have PrivateNetwork=yes and AF_UNIX only")
    tool = shutil.which("systemd-analyze")
    if tool and units:
        r = subprocess.run([tool, "verify", "--man=no", *units], capture_output=True, text=True)
        for line in (r.stdout + r.stderr).splitlines():
            # The binaries are not installed on a build machine; everything else is a finding.
            if line.strip() and "is not executable" not in line:
                fail(f"systemd-analyze verify: {line}")


def main():
    root = sys.argv[1] if len(sys.argv) > 1 else os.path.dirname(os.path.abspath(__file__))
    check_k8s(os.path.join(root, "k8s"))
    check_systemd(os.path.join(root, "systemd"))
    for e in errors:
        print(e)
    if errors:
        sys.exit(1)
    print("deploy: ok")


if __name__ == "__main__":
    main()
