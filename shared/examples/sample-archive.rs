//! Writes the sample archive: `cargo run -p shared --example sample-archive -- DIR [--seed N] [--entries N]`.
//!
//! `testdata/sample-archive` is this program's output with the defaults (`./dev sample-archive`);
//! a test regenerates it and compares the bytes.

use std::path::PathBuf;
use std::process::ExitCode;

use shared::log::sample::{SampleConfig, generate};

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let mut dir: Option<PathBuf> = None;
    let mut cfg = SampleConfig::default();
    while let Some(arg) = args.next() {
        let mut number = |flag: &str| -> Option<u64> {
            let v = args.next().and_then(|v| v.parse().ok());
            if v.is_none() {
                eprintln!("sample-archive: {flag} needs a number");
            }
            v
        };
        match arg.as_str() {
            "--seed" => match number("--seed") {
                Some(n) => cfg.seed = n,
                None => return ExitCode::from(2),
            },
            "--entries" => match number("--entries") {
                Some(n) => cfg.entries = n,
                None => return ExitCode::from(2),
            },
            "-h" | "--help" => {
                println!(
                    "usage: sample-archive DIR [--seed N (default 2026)] [--entries N (default 10500)]"
                );
                return ExitCode::SUCCESS;
            }
            _ if dir.is_none() && !arg.starts_with('-') => dir = Some(PathBuf::from(arg)),
            _ => {
                eprintln!("sample-archive: unexpected argument {arg:?} (try --help)");
                return ExitCode::from(2);
            }
        }
    }
    let Some(dir) = dir else {
        eprintln!("sample-archive: missing output directory (try --help)");
        return ExitCode::from(2);
    };
    let archive = match generate(&cfg) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("sample-archive: {e}");
            return ExitCode::FAILURE;
        }
    };
    if let Err(e) = std::fs::create_dir_all(&dir) {
        eprintln!("sample-archive: {}: {e}", dir.display());
        return ExitCode::from(2);
    }
    for seg in &archive.segments {
        let path = dir.join(&seg.name);
        if let Err(e) = std::fs::write(&path, &seg.bytes) {
            eprintln!("sample-archive: {}: {e}", path.display());
            return ExitCode::from(2);
        }
    }
    println!(
        "wrote {} segments, {} entries, head {} to {}",
        archive.segments.len(),
        cfg.entries,
        hex::encode(archive.head),
        dir.display()
    );
    ExitCode::SUCCESS
}
