use std::time::{Duration, Instant};

use chaos::process::{Proc, Spec, State};

/// A process that appends a line to `out` every 20 ms.
fn ticker(dir: &std::path::Path) -> (Spec, std::path::PathBuf) {
    let out = dir.join("ticks");
    let spec = Spec {
        name: "ticker".into(),
        program: "sh".into(),
        args: vec![
            "-c".into(),
            format!(
                "while :; do echo t >> '{}'; sleep 0.02; done",
                out.display()
            )
            .into(),
        ],
        env: vec![],
        log: dir.join("ticker.log"),
    };
    (spec, out)
}

fn ticks(path: &std::path::Path) -> usize {
    std::fs::read_to_string(path)
        .map(|s| s.lines().count())
        .unwrap_or(0)
}

/// Waits (bounded) until `f` holds.
fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn pause_freezes_kill_ends_and_restart_starts_again() {
    let dir = tempfile::tempdir().unwrap();
    let (spec, out) = ticker(dir.path());
    let mut p = Proc::start(spec).unwrap();
    eventually("it ticks", || ticks(&out) >= 2);
    p.pause().unwrap();
    assert_eq!(p.state(), State::Stopped);
    let frozen = ticks(&out);
    // The observation window: a live ticker would write about 15 lines in it.
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(ticks(&out), frozen, "a paused process wrote");
    p.resume().unwrap();
    eventually("it ticks again", || ticks(&out) > frozen);
    assert_eq!(p.state(), State::Live);
    let pid = p.pid().unwrap();
    p.kill().unwrap();
    assert_eq!(p.state(), State::Gone);
    assert!(
        !std::path::Path::new(&format!("/proc/{pid}")).exists(),
        "pid {pid} still exists"
    );
    assert!(p.pause().is_err(), "nothing to pause");
    p.restart().unwrap();
    assert_eq!((p.state(), p.starts()), (State::Live, 2));
    let before = ticks(&out);
    eventually("the restarted process ticks", || ticks(&out) > before);
    p.stop(Duration::from_secs(2)).unwrap();
    assert_eq!(p.state(), State::Gone);
}

#[test]
fn a_dropped_handle_kills_its_process() {
    let dir = tempfile::tempdir().unwrap();
    let (spec, _) = ticker(dir.path());
    let p = Proc::start(spec).unwrap();
    let pid = p.pid().unwrap();
    drop(p);
    assert!(!std::path::Path::new(&format!("/proc/{pid}")).exists());
}

#[test]
fn a_missing_program_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let (mut spec, _) = ticker(dir.path());
    spec.program = "/nonexistent/coordinator".into();
    let err = Proc::start(spec).err().expect("error");
    assert!(err.to_string().contains("starting ticker"), "{err}");
}
