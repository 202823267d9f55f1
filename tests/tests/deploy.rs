//! What `deploy/` gives an operator, checked without a cluster: the Kubernetes
//! manifests parse and hold together (every reference names something that exists,
//! every region has its StatefulSet, headless mesh Service and client Service), and
//! every example configuration, the files and those inside the manifests, passes the
//! binaries' own `--check-config` once pointed at real certificates.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use serde_json::Value;
use starling_tests::global::global_master_binary;
use starling_tests::node::binary;

const CHECK: Duration = Duration::from_secs(30);
const REGIONS: [&str; 2] = ["eu", "us"];

fn deploy() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ sits in the workspace")
        .join("deploy")
}

/// Every document of every manifest, as JSON values.
fn manifests() -> Result<Vec<(String, Value)>> {
    let mut docs = Vec::new();
    let mut paths: Vec<PathBuf> = std::fs::read_dir(deploy().join("k8s"))?
        .map(|e| e.map(|e| e.path()))
        .collect::<std::io::Result<_>>()?;
    paths.sort();
    for path in paths {
        let text = std::fs::read_to_string(&path)?;
        let file = path
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        for doc in serde_norway::Deserializer::from_str(&text) {
            let value: Value = serde::Deserialize::deserialize(doc)
                .with_context(|| format!("{file} does not parse"))?;
            docs.push((file.clone(), value));
        }
    }
    Ok(docs)
}

fn text<'a>(v: &'a Value, path: &str) -> Result<&'a str> {
    v.pointer(path)
        .and_then(Value::as_str)
        .with_context(|| format!("no {path} in {v}"))
}

fn items<'a>(v: &'a Value, path: &str) -> &'a [Value] {
    v.pointer(path)
        .and_then(Value::as_array)
        .map_or(&[], Vec::as_slice)
}

/// Objects by (kind, name).
fn index(docs: &[(String, Value)]) -> Result<BTreeMap<(String, String), Value>> {
    let mut objects = BTreeMap::new();
    for (file, doc) in docs {
        ensure!(text(doc, "/apiVersion").is_ok(), "{file}: no apiVersion");
        let kind = text(doc, "/kind")?.to_owned();
        let name = text(doc, "/metadata/name")?.to_owned();
        if kind != "Namespace" {
            ensure!(
                text(doc, "/metadata/namespace").ok() == Some("starling"),
                "{file}: {kind} {name} is outside the starling namespace"
            );
        }
        let key = (kind.clone(), name.clone());
        ensure!(
            objects.insert(key, doc.clone()).is_none(),
            "{file}: {kind} {name} is defined twice"
        );
    }
    Ok(objects)
}

#[test]
fn the_kubernetes_manifests_hold_together() -> Result<()> {
    let objects = index(&manifests()?)?;
    ensure!(
        objects.contains_key(&("Namespace".into(), "starling".into())),
        "no namespace"
    );
    let statefulsets: Vec<&Value> = (objects.iter())
        .filter(|((kind, _), _)| kind == "StatefulSet")
        .map(|(_, v)| v)
        .collect();
    for set in &statefulsets {
        check_statefulset(set, &objects)?;
    }

    for region in REGIONS {
        let name = format!("starling-{region}");
        let set = objects
            .get(&("StatefulSet".into(), name.clone()))
            .with_context(|| format!("no StatefulSet for region {region}"))?;
        let labels = &set["spec"]["template"]["metadata"]["labels"];
        ensure!(
            labels["starling.io/region"] == region,
            "{name}: labels {labels}"
        );
        let client = objects
            .get(&("Service".into(), name.clone()))
            .with_context(|| format!("no client Service for region {region}"))?;
        ensure!(
            client["spec"]["clusterIP"] != "None",
            "{name}: the client Service must balance, not be headless"
        );
        check_selects(client, labels)?;
        let mesh = &objects[&("Service".into(), text(set, "/spec/serviceName")?.to_owned())];
        let udp = items(mesh, "/spec/ports")
            .iter()
            .any(|p| p["protocol"] == "UDP" && p["port"] == 7400);
        ensure!(udp, "{name}: the mesh Service does not carry UDP 7400");
        let env: BTreeSet<&str> = items(set, "/spec/template/spec/containers/0/env")
            .iter()
            .filter_map(|e| e["name"].as_str())
            .collect();
        for needed in [
            "STARLING_NODE__ID",
            "STARLING_MESH__LISTEN",
            "STARLING_BRIDGE__LISTEN",
        ] {
            ensure!(env.contains(needed), "{name}: {needed} is not set");
        }
    }
    ensure!(
        objects.contains_key(&("StatefulSet".into(), "starling-gm".into())),
        "no global master StatefulSet"
    );
    Ok(())
}

/// A StatefulSet's references resolve: its headless Service selects its pods, its
/// volumes name ConfigMaps, Secrets and claims that exist, its probes hit declared
/// ports, and its ConfigMap holds the scripts and files it mounts.
fn check_statefulset(set: &Value, objects: &BTreeMap<(String, String), Value>) -> Result<()> {
    let name = text(set, "/metadata/name")?;
    let labels = &set["spec"]["template"]["metadata"]["labels"];
    for (key, value) in set["spec"]["selector"]["matchLabels"]
        .as_object()
        .context("no matchLabels")?
    {
        ensure!(
            &labels[key] == value,
            "{name}: selector {key} does not match its pods"
        );
    }
    let service_name = text(set, "/spec/serviceName")?;
    let service = objects
        .get(&("Service".into(), service_name.to_owned()))
        .with_context(|| format!("{name}: no Service {service_name}"))?;
    ensure!(
        service["spec"]["clusterIP"] == "None",
        "{name}: {service_name} must be headless"
    );
    check_selects(service, labels)?;

    let pod = &set["spec"]["template"]["spec"];
    let mut volumes: BTreeSet<&str> = BTreeSet::new();
    for volume in items(pod, "/volumes") {
        volumes.insert(text(volume, "/name")?);
        if let Some(map) = volume.pointer("/configMap/name").and_then(Value::as_str) {
            ensure!(
                objects.contains_key(&("ConfigMap".into(), map.to_owned())),
                "{name}: no ConfigMap {map}"
            );
        }
        if let Some(secret) = volume.pointer("/secret/secretName").and_then(Value::as_str) {
            ensure!(
                objects.contains_key(&("Secret".into(), secret.to_owned())),
                "{name}: no Secret {secret}"
            );
        }
    }
    for claim in items(set, "/spec/volumeClaimTemplates") {
        volumes.insert(text(claim, "/metadata/name")?);
    }

    let containers = items(pod, "/containers");
    ensure!(!containers.is_empty(), "{name}: no container");
    for container in containers {
        ensure!(text(container, "/image").is_ok(), "{name}: no image");
        let ports: BTreeSet<&str> = items(container, "/ports")
            .iter()
            .filter_map(|p| p["name"].as_str())
            .collect();
        for probe in ["readinessProbe", "livenessProbe"] {
            let port = text(container, &format!("/{probe}/httpGet/port"))?;
            ensure!(
                ports.contains(port),
                "{name}: {probe} port {port} is not declared"
            );
        }
        ensure!(
            text(container, "/readinessProbe/httpGet/path").ok() == Some("/health"),
            "{name}: readiness must be /health"
        );
        for mount in items(container, "/volumeMounts") {
            let volume = text(mount, "/name")?;
            ensure!(
                volumes.contains(volume),
                "{name}: mount of unknown volume {volume}"
            );
        }
        for env in items(container, "/env") {
            if let Some(secret) = env
                .pointer("/valueFrom/secretKeyRef/name")
                .and_then(Value::as_str)
            {
                let key = text(env, "/valueFrom/secretKeyRef/key")?;
                let holder = objects
                    .get(&("Secret".into(), secret.to_owned()))
                    .with_context(|| format!("{name}: no Secret {secret}"))?;
                ensure!(
                    holder["stringData"][key].is_string(),
                    "{name}: {secret} has no {key}"
                );
            }
        }
    }
    Ok(())
}

/// `service` selects pods with `labels` and targets ports its pods may declare.
fn check_selects(service: &Value, labels: &Value) -> Result<()> {
    let name = text(service, "/metadata/name")?;
    let selector = service["spec"]["selector"]
        .as_object()
        .context("no selector")?;
    ensure!(!selector.is_empty(), "{name}: empty selector");
    for (key, value) in selector {
        ensure!(
            &labels[key] == value,
            "{name}: selects {key}={value}, pods have {labels}"
        );
    }
    ensure!(
        !items(service, "/spec/ports").is_empty(),
        "{name}: no ports"
    );
    Ok(())
}

/// A cluster CA and one certificate, made by `region-node ca`.
fn certificates(dir: &Path) -> Result<Vec<(String, String)>> {
    let ca = dir.join("ca");
    let run = |args: &[&str]| -> Result<()> {
        let status = std::process::Command::new(binary()).args(args).status()?;
        ensure!(status.success(), "region-node {args:?}: {status}");
        Ok(())
    };
    let ca_dir = ca.to_str().context("utf-8")?;
    run(&["ca", "create", "--dir", ca_dir])?;
    run(&["ca", "issue", "--dir", ca_dir, "--name", "check"])?;
    Ok(vec![
        (
            "STARLING_TLS__CA_CERT".into(),
            ca.join("ca.pem").display().to_string(),
        ),
        (
            "STARLING_TLS__CERT".into(),
            ca.join("check.pem").display().to_string(),
        ),
        (
            "STARLING_TLS__KEY".into(),
            ca.join("check.key").display().to_string(),
        ),
    ])
}

/// Runs `program --config file --check-config` with `env`; returns its stdout.
async fn check_config(program: &Path, file: &Path, env: &[(String, String)]) -> Result<String> {
    let mut command = tokio::process::Command::new(program);
    command
        .arg("--config")
        .arg(file)
        .arg("--check-config")
        .env_remove("RUST_LOG")
        .kill_on_drop(true);
    for (name, value) in env {
        command.env(name, value);
    }
    let output = tokio::time::timeout(CHECK, command.output())
        .await
        .context("--check-config did not finish")??;
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    ensure!(
        output.status.success() && stdout.contains("configuration OK"),
        "{} rejected {}: {}\n{stdout}{}",
        program.display(),
        file.display(),
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(stdout)
}

#[tokio::test]
async fn every_example_configuration_passes_check_config() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let tls = certificates(dir.path())?;

    let mut files: Vec<PathBuf> = std::fs::read_dir(deploy().join("config"))?
        .map(|e| e.map(|e| e.path()))
        .collect::<std::io::Result<_>>()?;
    files.sort();
    let (mut nodes, mut members) = (0, 0);
    for file in &files {
        let name = file.file_name().unwrap_or_default().to_string_lossy();
        if name.starts_with("gm-") {
            check_config(&global_master_binary(), file, &tls).await?;
            members += 1;
        } else {
            check_config(&binary(), file, &tls).await?;
            nodes += 1;
        }
    }
    ensure!(
        nodes == 6 && members == 3,
        "{nodes} node and {members} member examples"
    );

    // The files inside the manifests, with what the pods set from their environment.
    let objects = index(&manifests()?)?;
    for region in REGIONS {
        let map = &objects[&("ConfigMap".into(), format!("starling-{region}-config"))];
        let path = dir.path().join(format!("{region}.toml"));
        std::fs::write(&path, text(map, "/data/node.toml")?)?;
        let mut env = tls.clone();
        env.extend([
            ("STARLING_NODE__ID".into(), format!("starling-{region}-0")),
            ("STARLING_MESH__LISTEN".into(), "127.0.0.1:7400".into()),
            ("STARLING_BRIDGE__LISTEN".into(), "127.0.0.1:7500".into()),
            ("STARLING_MESH__SEEDS".into(), "[\"127.0.0.2:7400\"]".into()),
        ]);
        check_config(&binary(), &path, &env).await?;
    }
    let map = &objects[&("ConfigMap".into(), "starling-gm-config".into())];
    let path = dir.path().join("gm.toml");
    std::fs::write(&path, text(map, "/data/gm.toml")?)?;
    for id in 1..=3 {
        let mut env = tls.clone();
        env.push(("STARLING_MEMBER__ID".into(), id.to_string()));
        check_config(&global_master_binary(), &path, &env).await?;
    }
    Ok(())
}
