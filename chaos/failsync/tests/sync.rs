//! The library in a real program: coreutils' `sync FILE` (fsync) and `sync -d FILE`
//! (fdatasync) fail with "Input/output error" while the trigger file exists, and succeed
//! otherwise, under `LD_PRELOAD`.

use std::path::PathBuf;
use std::process::Command;

/// `target/<profile>/libchaos_failsync.so`, built with this package's tests.
fn library() -> PathBuf {
    let exe = std::env::current_exe().expect("the test's path");
    let dir = exe
        .parent()
        .and_then(|d| d.parent())
        .expect("target/<profile>");
    let lib = dir.join("libchaos_failsync.so");
    assert!(
        lib.is_file(),
        "{} not built: `cargo build -p chaos-failsync` first (`./dev test` does; `cargo test` \
         builds no cdylib for a test that only loads it)",
        lib.display()
    );
    lib
}

fn sync(args: &[&str], file: &std::path::Path, trigger: &std::path::Path) -> (bool, String) {
    let out = Command::new("sync")
        .args(args)
        .arg(file)
        .env("LD_PRELOAD", library())
        .env("CHAOS_FAIL_SYNC_FILE", trigger)
        .output()
        .expect("coreutils sync runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn syncs_fail_with_eio_exactly_while_the_trigger_file_exists() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("data");
    std::fs::write(&file, b"bytes").unwrap();
    let trigger = dir.path().join("fail-now");

    for args in [&[][..], &["-d"][..]] {
        let (ok, err) = sync(args, &file, &trigger);
        assert!(ok, "sync {args:?} without the trigger: {err}");
    }
    std::fs::write(&trigger, b"").unwrap();
    for (args, call) in [(&[][..], "fsync"), (&["-d"][..], "fdatasync")] {
        let (ok, err) = sync(args, &file, &trigger);
        assert!(!ok, "sync {args:?} succeeded with the trigger present");
        assert!(err.contains("Input/output error"), "{err}");
        assert!(err.contains(&format!("chaos-failsync: {call}(")), "{err}");
    }
    std::fs::remove_file(&trigger).unwrap();
    let (ok, err) = sync(&["-d"], &file, &trigger);
    assert!(ok, "sync after the trigger went: {err}");
}
