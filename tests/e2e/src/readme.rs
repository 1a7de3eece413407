//! README's copy-paste blocks, run as a user pastes them: the tests take the commands from
//! README.md itself, so the documented install paths cannot drift from what is tested.

use std::{path::PathBuf, process::Command};

use crate::{Cluster, repo_root, tools_bin};

/// The fenced code block of README.md whose first command line (after `#` comments) starts with
/// `first`, as written (line continuations kept: bash reads them).
pub fn block(first: &str) -> String {
    let text = std::fs::read_to_string(repo_root().join("README.md")).expect("read README.md");
    let mut blocks = Vec::new();
    let mut current: Option<Vec<&str>> = None;
    for line in text.lines() {
        match (&mut current, line.trim_start().starts_with("```")) {
            (None, true) => current = Some(Vec::new()),
            (Some(_), true) => blocks.push(current.take().unwrap_or_default().join("\n")),
            (Some(lines), false) => lines.push(line),
            (None, false) => {}
        }
    }
    let starts = |b: &String| {
        b.lines().map(str::trim).find(|l| !l.is_empty() && !l.starts_with('#')).is_some_and(|l| l.starts_with(first))
    };
    let found: Vec<_> = blocks.into_iter().filter(starts).collect();
    assert_eq!(found.len(), 1, "README.md has one block starting `{first}`: {found:?}");
    found.into_iter().next().unwrap_or_default()
}

/// Runs `script` with bash (`set -euo pipefail`) in the repository, against `cluster`
/// (`KUBECONFIG`), with the pinned kubectl and the `tools` (helm, opm, ...) first on `PATH`;
/// panics with its output when it fails, else returns its stdout.
pub fn run(cluster: Option<&Cluster>, script: &str, tools: &[PathBuf]) -> String {
    let mut dirs: Vec<PathBuf> = tools.iter().filter_map(|t| t.parent().map(PathBuf::from)).collect();
    dirs.push(tools_bin());
    let path = std::env::join_paths(
        dirs.into_iter().chain(std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())),
    )
    .expect("PATH");
    let mut cmd = Command::new("bash");
    cmd.arg("-c").arg(format!("set -euo pipefail\n{script}")).current_dir(repo_root()).env("PATH", path);
    if let Some(c) = cluster {
        cmd.env("KUBECONFIG", &c.kubeconfig);
    }
    let out = cmd.output().expect("run bash");
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "README block failed:\n{script}\n{stdout}{stderr}");
    stdout.into_owned()
}
