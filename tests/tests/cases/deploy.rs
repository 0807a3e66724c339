//! The Kubernetes manifests start the real programs with arguments and environment their
//! configuration parser accepts: every kustomization is rendered with `kubectl kustomize` and each
//! container's command line is run with `--dry-run`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use carry_it::{Proc, TempDir};
use serde::Deserialize;
use serde_yaml::Value;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

fn kubectl() -> PathBuf {
    if let Some(k) = std::env::var_os("KUBECTL") {
        return PathBuf::from(k);
    }
    let venv = root().join(".venv-deploy/bin/kubectl");
    if venv.is_file() {
        return venv;
    }
    PathBuf::from("kubectl")
}

fn render(dir: &Path) -> Vec<Value> {
    let out = Command::new(kubectl()).arg("kustomize").arg(dir).output().unwrap_or_else(|e| {
        panic!("running kubectl ({e}); install it with `pip install -r deploy/requirements.txt` or set KUBECTL")
    });
    assert!(
        out.status.success(),
        "kubectl kustomize {}: {}",
        dir.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    serde_yaml::Deserializer::from_str(&text)
        .map(|d| Value::deserialize(d).unwrap())
        .collect()
}

fn s(v: &Value) -> &str {
    v.as_str().unwrap_or_default()
}

#[test]
fn manifests_are_accepted_by_the_programs() {
    let dir = TempDir::new("deploy");
    let k8s = root().join("deploy/k8s");
    let mut kustomizations = vec![k8s.join("base"), k8s.join("serving")];
    for e in std::fs::read_dir(k8s.join("overlays")).unwrap() {
        kustomizations.push(e.unwrap().path());
    }
    let mut checked = 0;
    for k in &kustomizations {
        let docs = render(k);
        // the settings file from the ConfigMap (job.toml for training, serve.toml for serving),
        // written where the test can read it
        let (config_path, config_text) = docs
            .iter()
            .find_map(|d| {
                let name = s(&d["metadata"]["name"]);
                if s(&d["kind"]) != "ConfigMap" {
                    return None;
                }
                if name.starts_with("carry-job") {
                    Some(("/etc/carry/job.toml", s(&d["data"]["job.toml"]).to_string()))
                } else if name.starts_with("carry-serve") {
                    Some((
                        "/etc/carry/serve.toml",
                        s(&d["data"]["serve.toml"]).to_string(),
                    ))
                } else {
                    None
                }
            })
            .expect("a carry-job or carry-serve ConfigMap");
        let job_file = dir.join("settings.toml");
        std::fs::write(&job_file, &config_text).unwrap();
        for d in docs
            .iter()
            .filter(|d| matches!(s(&d["kind"]), "StatefulSet" | "Job" | "Deployment"))
        {
            for c in d["spec"]["template"]["spec"]["containers"]
                .as_sequence()
                .unwrap()
            {
                let program = s(&c["command"][0]).to_string();
                assert!(
                    program == "coordinator" || program == "worker",
                    "unexpected program {program}"
                );
                let mut env: Vec<(String, String)> = Vec::new();
                for e in c["env"].as_sequence().into_iter().flatten() {
                    let value = if let Some(v) = e["value"].as_str() {
                        v.to_string()
                    } else if !e["valueFrom"]["secretKeyRef"].is_null() {
                        "secret-from-kubernetes".to_string()
                    } else if s(&e["valueFrom"]["fieldRef"]["fieldPath"]) == "status.podIP" {
                        "10.42.0.7".to_string()
                    } else if !e["valueFrom"]["fieldRef"].is_null() {
                        "carry-workers-x7k2p".to_string()
                    } else {
                        panic!("unsupported env entry {e:?}")
                    };
                    env.push((s(&e["name"]).to_string(), value));
                }
                let args: Vec<String> = c["args"]
                    .as_sequence()
                    .unwrap()
                    .iter()
                    .map(|a| {
                        let mut a = s(a).to_string();
                        for (k, v) in &env {
                            a = a.replace(&format!("$({k})"), v);
                        }
                        if a == config_path {
                            job_file.to_str().unwrap().to_string()
                        } else {
                            a
                        }
                    })
                    .collect();
                let mut full: Vec<&str> = args.iter().map(String::as_str).collect();
                full.push("--dry-run");
                let env_refs: Vec<(&str, &str)> =
                    env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
                let name = format!("{}-{}", k.file_name().unwrap().to_string_lossy(), program);
                let mut p = Proc::start(
                    &name,
                    &carry_it::bin(&program),
                    &full,
                    &env_refs,
                    dir.path(),
                );
                let status = p.wait(Duration::from_secs(30));
                p.check(
                    status.success(),
                    &format!("{name}: the program refused the manifest's arguments {args:?}"),
                );
                let log = p.log();
                if program == "coordinator" && args.first().is_some_and(|a| a == "serve") {
                    p.check(
                        log.contains("0.0.0.0:50061") && log.contains("state_dir: Some("),
                        "serving settings applied",
                    );
                } else if program == "coordinator" {
                    p.check(
                        log.contains("0.0.0.0:50051") && log.contains("auto_resume: true"),
                        "coordinator settings applied",
                    );
                    p.check(log.contains("batch_size: 10"), "job.toml applied");
                } else {
                    p.check(
                        log.contains("carry-coordinator:50051")
                            && log.contains("carry-workers-x7k2p"),
                        "worker settings applied",
                    );
                    p.check(
                        log.contains("0.0.0.0:7000") && log.contains("10.42.0.7:7000"),
                        "the peer port listens on every address and is advertised at the pod IP",
                    );
                }
                checked += 1;
            }
        }
    }
    // two containers (coordinator and workers) per training rendering, one for serving
    assert!(
        checked > 2 * (kustomizations.len() - 1),
        "checked {checked} containers"
    );
}
