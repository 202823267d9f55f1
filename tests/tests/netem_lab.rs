//! `deploy/lab/netem-lab.sh`: a federation in network namespaces with `tc netem`
//! latency between regions. It needs root, working `ip netns` and veth links, and for
//! the latency the kernel's netem qdisc; each test says plainly what it skips when the
//! machine lacks one of them.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use anyhow::{ensure, Context, Result};
use starling_tests::node::binary;

/// The injected one-way delay: well above what a read through a bridge costs on a
/// debug build without any delay (about 150 ms), so the check can fail.
const DELAY_MS: u32 = 400;
/// Bounds the lab itself (`--duration`) and the test's wait for it.
const LAB_SECONDS: u32 = 150;

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/lab/netem-lab.sh")
}

fn quiet(program: &str, args: &[&str]) -> bool {
    Command::new(program)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// What this machine lacks for the lab, if anything: `Err(reason)`. With
/// `netem`, the delay qdisc is probed too.
fn lab_possible(netem: bool) -> Result<(), String> {
    let uid = Command::new("id")
        .arg("-u")
        .output()
        .map_err(|e| e.to_string())?;
    if String::from_utf8_lossy(&uid.stdout).trim() != "0" {
        return Err("not root".into());
    }
    for tool in ["ip", "tc", "curl"] {
        if !quiet("sh", &["-c", &format!("command -v {tool}")]) {
            return Err(format!("{tool} is not installed"));
        }
    }
    let ns = format!("stprobe-{}", std::process::id());
    if !quiet("ip", &["netns", "add", &ns]) {
        return Err("`ip netns add` fails here (no permission for network namespaces)".into());
    }
    let veth = quiet(
        "ip",
        &[
            "-n", &ns, "link", "add", "stpa", "type", "veth", "peer", "name", "stpb",
        ],
    );
    let delay = veth
        && quiet("ip", &["-n", &ns, "link", "set", "stpa", "up"])
        && quiet(
            "tc",
            &[
                "-n", &ns, "qdisc", "add", "dev", "stpa", "root", "netem", "delay", "1ms",
            ],
        );
    quiet("ip", &["netns", "delete", &ns]);
    if !veth {
        return Err("veth links cannot be created here".into());
    }
    if netem && !delay {
        return Err("tc netem is unavailable (the kernel has no sch_netem)".into());
    }
    Ok(())
}

fn run_lab(args: &[&str], env: &[(&str, &str)]) -> Result<Output> {
    let bin_dir = binary().parent().context("the binary's folder")?.to_owned();
    let mut command = Command::new("timeout");
    command
        .arg(format!("{}", LAB_SECONDS + 30))
        .arg("bash")
        .arg(script())
        .args(args)
        .arg("--duration")
        .arg(LAB_SECONDS.to_string())
        .arg("--bin-dir")
        .arg(bin_dir)
        .stdin(Stdio::null());
    for (name, value) in env {
        command.env(name, value);
    }
    Ok(command.output()?)
}

/// The run's tag, from its first line ("netem-lab: tag abcd: ...").
fn tag(stdout: &str) -> Result<String> {
    let line = stdout
        .lines()
        .find(|l| l.starts_with("netem-lab: tag "))
        .with_context(|| format!("no tag line in {stdout}"))?;
    Ok(line["netem-lab: tag ".len()..]
        .split(':')
        .next()
        .unwrap_or_default()
        .to_owned())
}

/// Nothing the run tagged `tag` made is left: no namespace, no link.
fn nothing_left(tag: &str) -> Result<()> {
    let namespaces = Command::new("ip").args(["netns", "list"]).output()?;
    let namespaces = String::from_utf8_lossy(&namespaces.stdout);
    ensure!(
        !namespaces.contains(&format!("stlab-{tag}")),
        "namespaces left behind: {namespaces}"
    );
    let links = Command::new("ip").args(["-o", "link"]).output()?;
    let links = String::from_utf8_lossy(&links.stdout);
    ensure!(
        !links.contains(&format!("sl{tag}")),
        "links left behind: {links}"
    );
    Ok(())
}

fn describe(output: &Output) -> String {
    format!(
        "{}\n--- stdout\n{}\n--- stderr\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

#[test]
fn the_lab_removes_what_it_made_when_it_fails() -> Result<()> {
    if let Err(why) = lab_possible(false) {
        eprintln!("SKIPPED netem lab cleanup test: {why}");
        return Ok(());
    }
    let output = run_lab(
        &["--delay-ms", "0", "--regions", "3"],
        &[("STARLING_LAB_FAIL_AT", "setup")],
    )?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    ensure!(output.status.code() == Some(1), "{}", describe(&output));
    let tag = tag(&stdout)?;
    ensure!(
        stdout.contains(&format!(
            "removed namespaces stlab-{tag}-hub stlab-{tag}-r1"
        )),
        "{}",
        describe(&output)
    );
    nothing_left(&tag)
}

#[test]
fn a_message_reaches_another_region_no_sooner_than_the_injected_delay() -> Result<()> {
    let (delay, why) = match lab_possible(true) {
        Ok(()) => (DELAY_MS, None),
        Err(why) => (0, Some(why)),
    };
    if let Some(why) = &why {
        match lab_possible(false) {
            Ok(()) => eprintln!(
                "SKIPPED the netem delay check: {why}; running the lab without injected delay \
                 (the federation across namespaces is still checked)"
            ),
            Err(also) => {
                eprintln!("SKIPPED netem lab test: {also}");
                return Ok(());
            }
        }
    }
    let delay_arg = delay.to_string();
    let output = run_lab(&["--check", "--delay-ms", &delay_arg], &[])?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    eprintln!("{stdout}");
    ensure!(output.status.success(), "{}", describe(&output));
    ensure!(
        stdout.contains("netem-lab: PASSED"),
        "{}",
        describe(&output)
    );
    ensure!(
        stdout.contains(&format!("injected delay {delay} ms")),
        "{stdout}"
    );
    nothing_left(&tag(&stdout)?)
}
