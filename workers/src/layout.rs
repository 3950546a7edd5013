//! The layout's rules, checked on the sources: no source file outside the
//! tests runs past [`MAX_LINES`] (a file's own unit tests at its end do not
//! count), a stage names no other stage, and the sandbox gateway (its own
//! crate, the third party) is named only by itself and by what stands it
//! up: the binary, the demo and the benchmark. Its channel adapter speaks
//! its HTTP API without naming it. `ops`, the demo and the benchmark print
//! nothing: they return data and report progress, and the binary renders
//! them.

use std::{
    fs,
    path::{Path, PathBuf},
};

/// The most lines a source file may have.
const MAX_LINES: usize = 500;

/// Where the gateway may be named: itself, the binary, the demo and the benchmark.
const MAY_NAME_THE_SANDBOX: &[&str] = &[
    "sandbox-gateway/",
    "workers/src/bin/",
    "workers/src/demo/",
    // the benchmark, like the demo, stands the sandbox up as the third party
    "workers/src/bench/",
    "workers/src/layout.rs",
];

/// How the gateway is named: its crate, and the module it once was.
const SANDBOX_NAMES: &[&str] = &["payfleet_sandbox_gateway", "sandbox_gateway"];

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the workspace holds the crate")
        .to_path_buf()
}

fn sources(dir: &Path, found: &mut Vec<PathBuf>) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            sources(&path, found);
        } else if path.extension().is_some_and(|e| e == "rs") {
            found.push(path);
        }
    }
}

/// Every source file outside the tests, by its path from the workspace root.
fn source_files() -> Vec<(String, String)> {
    let root = root();
    let mut found = Vec::new();
    for dir in [
        "common/src",
        "sandbox-gateway/src",
        "workers/src",
        "benches",
    ] {
        sources(&root.join(dir), &mut found);
    }
    assert!(!found.is_empty(), "no sources under {}", root.display());
    found.sort();
    found
        .into_iter()
        .map(|path| {
            let text = fs::read_to_string(&path).expect("a source file reads");
            let name = path
                .strip_prefix(&root)
                .expect("under the root")
                .to_string_lossy()
                .replace('\\', "/");
            (name, text)
        })
        .collect()
}

/// Lines before the file's own unit tests.
fn code_lines(text: &str) -> usize {
    text.lines()
        .take_while(|line| *line != "#[cfg(test)]")
        .count()
}

#[test]
fn no_source_file_outside_the_tests_is_over_500_lines() {
    let over: Vec<String> = source_files()
        .into_iter()
        .filter(|(_, text)| code_lines(text) > MAX_LINES)
        .map(|(name, text)| format!("{name}: {} lines", code_lines(&text)))
        .collect();
    assert!(
        over.is_empty(),
        "split these (at most {MAX_LINES} lines before a file's unit tests):\n{}",
        over.join("\n")
    );
}

#[test]
fn a_stage_names_no_other_stage() {
    let stages = [
        "order_validation",
        "fund_freeze",
        "channel_call",
        "callback",
        "settlement",
        "notification",
    ];
    let mut crossings = Vec::new();
    for (name, text) in source_files() {
        let Some(own) = stages
            .iter()
            .find(|stage| name.starts_with(&format!("workers/src/stages/{stage}")))
        else {
            continue;
        };
        for other in stages.iter().filter(|other| *other != own) {
            if text.contains(&format!("stages::{other}"))
                || text.contains(&format!("super::{other}"))
            {
                crossings.push(format!("{name} names {other}"));
            }
        }
    }
    assert!(crossings.is_empty(), "{}", crossings.join("\n"));
}

#[test]
fn only_the_gateway_and_what_stands_it_up_name_the_sandbox_gateway() {
    let named: Vec<String> = source_files()
        .into_iter()
        .filter(|(name, _)| {
            !MAY_NAME_THE_SANDBOX
                .iter()
                .any(|allowed| name.starts_with(allowed))
        })
        .filter(|(_, text)| SANDBOX_NAMES.iter().any(|n| text.contains(n)))
        .map(|(name, _)| name)
        .collect();
    assert!(named.is_empty(), "{}", named.join("\n"));
}

#[test]
fn the_sandbox_gateway_links_to_no_fleet_crate() {
    let manifest = fs::read_to_string(root().join("sandbox-gateway/Cargo.toml"))
        .expect("the gateway's manifest reads");
    let fleet: Vec<&str> = ["payfleet-common", "payfleet-workers", "payfleet-tests"]
        .into_iter()
        .filter(|name| manifest.contains(name))
        .collect();
    assert!(fleet.is_empty(), "the gateway depends on {fleet:?}");
}

#[test]
fn ops_the_demo_and_the_bench_print_nothing() {
    let printing: Vec<String> = source_files()
        .into_iter()
        .filter(|(name, _)| {
            [
                "workers/src/ops/",
                "workers/src/demo/",
                "workers/src/bench/",
            ]
            .iter()
            .any(|dir| name.starts_with(dir))
        })
        .filter(|(_, text)| {
            ["println!", "print!", "eprintln!", "eprint!", "stdout()"]
                .iter()
                .any(|p| text.contains(p))
        })
        .map(|(name, _)| name)
        .collect();
    assert!(
        printing.is_empty(),
        "these return data; the binary (bin/payfleet/render.rs) prints:\n{}",
        printing.join("\n")
    );
}
