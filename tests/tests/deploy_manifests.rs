//! The deployment material (deploy/systemd, deploy/k8s) is checked by `deploy/check.py`
//! (python3 + PyYAML + tomllib; `systemd-analyze verify` when installed): every manifest parses,
//! the embedded configuration files parse, and the process boundary holds (signer: one replica,
//! reachable by core pods only; HPA on the edge Deployment; probes on the admin port). Each
//! invariant is also broken on purpose in a copy, to show the check notices.

use std::path::{Path, PathBuf};
use std::process::Command;

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .join("deploy")
}

/// Runs the checker on `dir`: (passed, output).
fn check(dir: &Path) -> (bool, String) {
    let (ok, out, err) = certgate_e2e::run(
        Command::new("python3")
            .arg(deploy_dir().join("check.py"))
            .arg(dir),
    );
    (ok, format!("{out}{err}"))
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for e in std::fs::read_dir(from).expect("read_dir") {
        let e = e.expect("entry");
        let dest = to.join(e.file_name());
        if e.file_type().expect("type").is_dir() {
            copy_dir(&e.path(), &dest);
        } else {
            std::fs::copy(e.path(), dest).expect("copy");
        }
    }
}

#[test]
fn shipped_manifests_and_units_pass_the_check() {
    let (ok, out) = check(&deploy_dir());
    assert!(ok && out.contains("deploy: ok"), "{out}");
}

#[test]
fn each_broken_invariant_is_reported() {
    let cases: &[(&str, &str, &str, &str)] = &[
        (
            "k8s/extra.yaml",
            "",
            "apiVersion: v1\nkind: Service\nmetadata: {name: oops, namespace: certgate}\n\
             spec:\n  selector: {app.kubernetes.io/name: certgate-signer}\n  ports: [{port: 7300}]\n",
            "exposes the signer",
        ),
        (
            "k8s/signer.yaml",
            "  replicas: 1\n",
            "  replicas: 2\n",
            "exactly 1 replica",
        ),
        (
            "k8s/networkpolicies.yaml",
            "        - podSelector: {matchLabels: {app.kubernetes.io/name: certgate-core}}\n      ports:\n        - {protocol: TCP, port: 7300}",
            "        - namespaceSelector: {}\n      ports:\n        - {protocol: TCP, port: 7300}",
            "admits other than core pods to the signer",
        ),
        (
            "k8s/networkpolicies.yaml",
            "        - podSelector: {matchLabels: {app.kubernetes.io/name: redis}}",
            "        - podSelector: {matchLabels: {app.kubernetes.io/name: certgate-signer}}",
            "edges may reach the signer",
        ),
        (
            "k8s/edge.yaml",
            "    name: certgate-edge\n  minReplicas",
            "    name: certgate-core\n  minReplicas",
            "no HorizontalPodAutoscaler targets",
        ),
        (
            "k8s/edge.yaml",
            "httpGet: {path: /readyz, port: admin}",
            "httpGet: {path: /readyz, port: http}",
            "readinessProbe must GET /readyz",
        ),
        (
            "systemd/certgate-signer.service",
            "PrivateNetwork=yes\n",
            "",
            "PrivateNetwork=yes and AF_UNIX only",
        ),
        (
            "systemd/certgate-edge.service",
            "MemoryDenyWriteExecute=yes\n",
            "",
            "no MemoryDenyWriteExecute=yes",
        ),
        (
            "k8s/configmaps.yaml",
            "    mode = \"production\"\n",
            "    mode = = \"production\"\n",
            "TOML",
        ),
    ];
    for (file, from, to, expect) in cases {
        let tmp = certgate_e2e::temp_dir();
        let dir = tmp.path().join("deploy");
        copy_dir(&deploy_dir(), &dir);
        let path = dir.join(file);
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        let changed = if from.is_empty() {
            format!("{text}{to}")
        } else {
            assert!(text.contains(from), "{file} no longer contains {from:?}");
            text.replacen(from, to, 1)
        };
        std::fs::write(&path, changed).expect("write");
        let (ok, out) = check(&dir);
        assert!(
            !ok && out.contains(expect),
            "{file}: expected a finding `{expect}`, got (passed={ok}):\n{out}"
        );
    }
}
