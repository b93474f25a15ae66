//! Fail-stop: a coordinator that panics anywhere stops at once.
//!
//! A panic in the state machine's apply leaves the ledger half changed and its lock poisoned;
//! a replica that went on serving would answer from state nobody can trust (a jepsen run once
//! found two of three replicas still up after their apply panicked, printing hundreds of
//! panics each). So the process aborts after the panic message is written: the harness and
//! an operator's supervisor see it exit, and a restart replays the log from what was synced.

/// Installs the panic hook: the usual message, one line that says why, then abort.
pub fn install(program: &'static str) {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        default(info);
        eprintln!(
            "{program}: stopping at once (fail-stop): after a panic this replica's state can no \
             longer be trusted; a restart replays its log from disk"
        );
        std::process::abort();
    }));
}

#[cfg(test)]
mod tests {
    use std::os::unix::process::ExitStatusExt;
    use std::process::Command;

    const CHILD: &str = "BUDGET_FAIL_STOP_CHILD";
    const SIGABRT: i32 = 6;

    /// Runs itself as a child that installs the hook and panics on another thread: the child
    /// must die of SIGABRT with the reason on stderr, not return from the join.
    #[test]
    fn a_panic_on_any_thread_stops_the_process() {
        if std::env::var_os(CHILD).is_some() {
            super::install("coordinator");
            let t = std::thread::spawn(|| panic!("planted panic"));
            let _ = t.join();
            // Reached only if the hook did not stop the process: the parent sees exit 0.
            return;
        }
        let out = Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "fail_stop::tests::a_panic_on_any_thread_stops_the_process",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD, "1")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            out.status.signal(),
            Some(SIGABRT),
            "{:?}: {stderr}",
            out.status
        );
        assert!(stderr.contains("planted panic"), "{stderr}");
        assert!(stderr.contains("fail-stop"), "{stderr}");
    }
}
