//! Replays the fuzz corpora (`fuzz/corpus/<target>/`, seeds plus what the fuzzer kept) and the
//! crash regressions (`fuzz/regressions/<target>/`) through the same functions the fuzz
//! targets call, on the stable toolchain: a change that brings back a found crash, or breaks a
//! property on an input the fuzzer once reached, fails here without a fuzzer.

use std::path::{Path, PathBuf};

/// A fuzz target: what `fuzz/fuzz_targets/<name>.rs` calls.
type Target = (&'static str, fn(&[u8]));

const TARGETS: &[Target] = &[
    ("h1_request", legate::fuzzing::h1_request),
    ("h1_response", legate::fuzzing::h1_response),
    ("config", legate::fuzzing::config),
    ("tls", legate::fuzzing::tls),
    ("postgres", legate::fuzzing::postgres),
    ("trace_headers", legate::fuzzing::trace_headers),
];

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz")
}

fn files(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.is_file() && p.file_name().is_none_or(|n| n != ".gitkeep"))
        .collect();
    out.sort();
    out
}

fn replay(target: &str, run: fn(&[u8]), dirs: &[&str]) -> usize {
    let mut count = 0;
    let mut failed = Vec::new();
    for dir in dirs {
        for file in files(&fuzz_dir().join(dir).join(target)) {
            let data = std::fs::read(&file).expect("read a corpus file");
            count += 1;
            if std::panic::catch_unwind(|| run(&data)).is_err() {
                failed.push(file.display().to_string());
            }
        }
    }
    assert!(
        failed.is_empty(),
        "{target}: {} input(s) fail:\n{}",
        failed.len(),
        failed.join("\n")
    );
    count
}

#[test]
fn every_corpus_input_holds() {
    for (target, run) in TARGETS {
        let n = replay(target, *run, &["corpus"]);
        // The seeds are checked in: an empty or missing corpus is a broken checkout.
        assert!(n >= 5, "{target}: only {n} corpus inputs");
    }
}

#[test]
fn every_crash_found_stays_fixed() {
    for (target, run) in TARGETS {
        replay(target, *run, &["regressions"]);
    }
}

/// Each target tells good input from bad: a target that ignored its input would pass every
/// replay above.
#[test]
fn the_targets_reach_their_parsers() {
    let seeds = fuzz_dir().join("corpus");
    let h1 = files(&seeds.join("h1_request"));
    let accepted = h1
        .iter()
        .filter_map(|f| std::fs::read(f).ok())
        .filter(|d| {
            matches!(
                legate::h1::request::parse(
                    &d[1..],
                    &legate::h1::request::HeadLimits {
                        max_header_bytes: 8192,
                        max_headers: 100
                    }
                ),
                Ok(Some(_))
            )
        })
        .count();
    assert!(
        accepted >= 10 && accepted < h1.len(),
        "{accepted} of {} request seeds parse",
        h1.len()
    );
}
