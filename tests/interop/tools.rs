//! Privileges and external tools: whether the test may run at all, installing kamailio, sipp
//! and tshark when missing, and their versions for the record.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::harness::{loud, report, run_bounded, tail};

const INSTALL_SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/install-interop-deps");
const TOOLS: [&str; 3] = ["kamailio", "sipp", "tshark"];

/// True if the test may run: root, or a loud skip (a failure when CI=true).
pub fn may_run() -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    let why = "kamailio_interop needs root (to install kamailio/sipp/tshark, for sipp's \
               raw-socket pcap play and for packet capture)";
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("{why}; CI=true forbids skipping it");
    }
    loud(
        "SKIPPED: needs root to install kamailio/sipp (kamailio_interop also needs it for \
         sipp's raw-socket pcap play and for packet capture)",
    );
    false
}

fn on_path(tool: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|path| {
        std::env::split_paths(&path).any(|dir| {
            let p = dir.join(tool);
            std::fs::metadata(&p).is_ok_and(|m| m.is_file())
        })
    })
}

/// Installs kamailio, sipp and tshark with scripts/install-interop-deps when any is missing.
pub fn ensure_tools(dir: &Path) {
    let missing: Vec<&str> = TOOLS.into_iter().filter(|t| !on_path(t)).collect();
    if missing.is_empty() {
        return;
    }
    report(&format!(
        "kamailio_interop: {} missing; running {INSTALL_SCRIPT}",
        missing.join(", ")
    ));
    let (status, out, err) = run_bounded(
        dir,
        "install-interop-deps",
        &mut Command::new(INSTALL_SCRIPT),
        Duration::from_secs(900),
    );
    assert!(
        status.is_some_and(|s| s.success()),
        "scripts/install-interop-deps failed ({status:?}):\n{}\n{}",
        tail(&out, 40),
        tail(&err, 40)
    );
    for tool in TOOLS {
        assert!(
            on_path(tool),
            "{tool} still missing after install-interop-deps"
        );
    }
}

/// One line per tool: the first line of its version output that names it.
pub fn versions(dir: &Path) -> String {
    let first = |name: &str, cmd: &mut Command, pick: &dyn Fn(&str) -> bool| {
        let (_, out, err) = run_bounded(dir, name, cmd, Duration::from_secs(10));
        format!("{out}\n{err}")
            .lines()
            .map(str::trim)
            .find(|l| pick(l))
            .unwrap_or("(unknown)")
            .to_string()
    };
    let kamailio = first(
        "kamailio-version",
        Command::new("kamailio").arg("-v"),
        &|l: &str| l.contains("kamailio"),
    );
    let sipp = first(
        "sipp-version",
        Command::new("sipp").arg("-v"),
        &|l: &str| l.contains("SIPp v"),
    );
    let tshark = first(
        "tshark-version",
        Command::new("tshark").arg("--version"),
        &|l: &str| l.starts_with("TShark"),
    );
    format!("kamailio: {kamailio}\nsipp:     {sipp}\ntshark:   {tshark}")
}
