//! Both binaries refuse a bad configuration before doing anything, with exit code 78
//! and a message naming the key and what is wrong with it: an unknown key, an address
//! that is not one, a certificate file that is not there. The same holds with and
//! without `--check-config`, which otherwise only says the configuration is fine.

use std::path::Path;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use starling_tests::global::global_master_binary;
use starling_tests::node::binary;

const EXIT_CONFIG: i32 = 78;
/// A refused configuration stops at once; this only bounds a node that would start.
const EXIT: Duration = Duration::from_secs(20);

const NODE_CASES: &[(&str, &str, &[&str])] = &[
    (
        "unknown key",
        "[node]\nid = \"n1\"\nregoin = \"eu\"\n",
        &["node.regoin", "unknown field"],
    ),
    (
        "bad address",
        "[listen]\nclient = \"localhost:8080\"\n",
        &["listen.client", "socket address", "127.0.0.1:8080"],
    ),
    (
        "missing certificate",
        "[mesh]\nlisten = \"127.0.0.1:0\"\n[tls]\nca_cert = \"/nonexistent/ca.pem\"\n\
         cert = \"/nonexistent/n1.pem\"\nkey = \"/nonexistent/n1.key\"\n",
        &["tls.ca_cert", "/nonexistent/ca.pem", "not found"],
    ),
    (
        "mesh without certificates",
        "[mesh]\nlisten = \"127.0.0.1:0\"\n",
        &["mesh.listen needs", "tls"],
    ),
    (
        "a zero limit",
        "[limits]\nmax_message_size = 0\n",
        &["limits.max_message_size must be at least 1"],
    ),
    (
        "a zero frame size",
        "[limits]\nmax_frame_size = 0\n",
        &["limits.max_frame_size must be at least 1"],
    ),
    (
        "a certificate that is not PEM",
        "[client_tls]\nlisten = \"127.0.0.1:0\"\ncert = \"/etc/hostname\"\nkey = \"/etc/hostname\"\n",
        &["client_tls.cert", "/etc/hostname"],
    ),
    (
        "a log filter that does not parse",
        "[log]\nlevel = \"[[[bad\"\n",
        &["log.level"],
    ),
];

const MEMBER_CASES: &[(&str, &str, &[&str])] = &[
    (
        "unknown key",
        "[member]\nid = 1\ndatadir = \"x\"\n",
        &["member.datadir", "unknown field"],
    ),
    (
        "bad address",
        "[listen]\nraft = \"gm-1:7100\"\n",
        &["listen.raft", "socket address"],
    ),
    (
        "missing certificate",
        "[tls]\nca_cert = \"/nonexistent/ca.pem\"\ncert = \"/nonexistent/gm.pem\"\n\
         key = \"/nonexistent/gm.key\"\n",
        &["tls.ca_cert", "/nonexistent/ca.pem", "not found"],
    ),
    (
        "no certificates at all",
        "[member]\nid = 1\n",
        &["tls.ca_cert, tls.cert and tls.key are required"],
    ),
];

async fn run(program: &Path, args: &[&str]) -> Result<(i32, String, String)> {
    let mut command = tokio::process::Command::new(program);
    command
        .args(args)
        .env_remove("RUST_LOG")
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    let output = tokio::time::timeout(EXIT, command.output())
        .await
        .with_context(|| format!("{} {args:?} did not exit", program.display()))??;
    Ok((
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    ))
}

async fn refused_everywhere(program: &Path, cases: &[(&str, &str, &[&str])]) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("data");
    let data = data.to_str().context("utf-8")?;
    for (i, (case, toml, wanted)) in cases.iter().enumerate() {
        let file = dir.path().join(format!("case-{i}.toml"));
        std::fs::write(&file, toml)?;
        let file = file.to_str().context("utf-8")?;
        for check in [true, false] {
            let mut args = vec!["--config", file, "--data-dir", data];
            if check {
                args.push("--check-config");
            }
            let (code, stdout, stderr) = run(program, &args).await?;
            ensure!(
                code == EXIT_CONFIG,
                "{case} (check: {check}): exit {code}, want {EXIT_CONFIG}\n{stdout}{stderr}"
            );
            for needle in *wanted {
                ensure!(
                    stderr.contains(needle),
                    "{case}: the message lacks {needle:?}: {stderr}"
                );
            }
            ensure!(
                !stdout.contains("configuration OK"),
                "{case}: said OK: {stdout}"
            );
        }
    }
    Ok(())
}

#[tokio::test]
async fn region_node_refuses_bad_configurations_with_exit_78_and_the_key() -> Result<()> {
    refused_everywhere(&binary(), NODE_CASES).await
}

#[tokio::test]
async fn global_master_refuses_bad_configurations_with_exit_78_and_the_key() -> Result<()> {
    refused_everywhere(&global_master_binary(), MEMBER_CASES).await
}

#[tokio::test]
async fn a_bad_environment_variable_is_named() -> Result<()> {
    let output = tokio::process::Command::new(binary())
        .arg("--check-config")
        .env("STARLING_LISTEN__CLIENT", "nope")
        .output()
        .await?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    ensure!(output.status.code() == Some(EXIT_CONFIG), "{stderr}");
    ensure!(
        stderr.contains("listen.client") && stderr.contains("STARLING_LISTEN__CLIENT"),
        "names the key and the variable: {stderr}"
    );
    Ok(())
}

#[tokio::test]
async fn check_config_accepts_the_defaults_and_names_unknown_variables() -> Result<()> {
    let mut command = tokio::process::Command::new(binary());
    command
        .arg("--check-config")
        .env("STARLING_NODE__IDD", "x")
        .kill_on_drop(true);
    let output = tokio::time::timeout(EXIT, command.output()).await??;
    let stdout = String::from_utf8_lossy(&output.stdout);
    ensure!(output.status.success(), "{}: {stdout}", output.status);
    ensure!(stdout.contains("configuration OK: defaults"), "{stdout}");
    ensure!(
        stdout.contains("warning: ignoring unknown environment variable STARLING_NODE__IDD"),
        "{stdout}"
    );
    Ok(())
}
