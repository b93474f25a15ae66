//! Fail-stop: a coordinator that panics anywhere stops at once.
//!
//! A panic in the state machine's apply leaves the ledger half changed and its lock poisoned;
//! a replica that went on serving would answer from state nobody can trust (a jepsen run once
//! found two of three replicas still up after their apply panicked, printing hundreds of
//! panics each). So the process aborts after the panic message is written: the harness and
//! an operator's supervisor see it exit, and a restart replays the log from what was synced.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};

/// Set by the panic hook before it aborts: an abort that follows is ours, not the storage
/// engine's.
static PANICKED: AtomicBool = AtomicBool::new(false);

/// The data directory, for the abort handler's free-space figure.
static DATA_DIR: OnceLock<std::ffi::CString> = OnceLock::new();

/// Below this much free space an abort inside the storage engine is reported as a full disk.
const LOW_SPACE_BYTES: u64 = 64 << 20;

/// Installs the panic hook: the usual message, one line that says why, then abort.
pub fn install(program: &'static str) {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        PANICKED.store(true, Ordering::SeqCst);
        default(info);
        eprintln!(
            "{program}: stopping at once (fail-stop): after a panic this replica's state can no \
             longer be trusted; a restart replays its log from disk"
        );
        std::process::abort();
    }));
}

/// Turns an abort inside the storage engine into the storage failure it is: exit 74, with a
/// line that says so and how much space the data directory has left.
///
/// Debian's RocksDB keeps its assertions, and one of them aborts the process when a file that
/// already failed a write is written or synced again: after `ENOSPC`, a background flush
/// syncing the write-ahead log can do that before the failed write's error reaches Raft and
/// [`crate::server::run`] exits 74 (long jepsen seed 9: a leader on a full disk died of
/// SIGABRT, saying nothing of the disk). Nothing is lost either way (what was acknowledged is
/// synced); this makes the stop say why. An abort after a panic (the hook above) stays an
/// abort.
pub fn install_storage_abort(data_dir: &std::path::Path) {
    use std::os::unix::ffi::OsStrExt;
    let Ok(dir) = std::ffi::CString::new(data_dir.as_os_str().as_bytes()) else {
        return;
    };
    let _ = DATA_DIR.set(dir);
    let handler: extern "C" fn(libc::c_int) = on_abort;
    // SAFETY: `on_abort` is async-signal-safe: an atomic load, write(2), statvfs(2), _exit(2),
    // and a re-raise with the default action restored.
    unsafe {
        libc::signal(libc::SIGABRT, handler as libc::sighandler_t);
    }
}

extern "C" fn on_abort(sig: libc::c_int) {
    if PANICKED.load(Ordering::SeqCst) {
        // Our own fail-stop after a panic: die of the signal, as before.
        // SAFETY: restoring the default action and raising again are async-signal-safe.
        unsafe {
            libc::signal(sig, libc::SIG_DFL);
            libc::raise(sig);
        }
        return;
    }
    let free = DATA_DIR.get().and_then(|d| {
        // SAFETY: statvfs(2) on a NUL-terminated path into a zeroed struct on the stack.
        unsafe {
            let mut st: libc::statvfs = std::mem::zeroed();
            // Both fields are narrower than u64 on some targets.
            #[allow(clippy::useless_conversion)]
            (libc::statvfs(d.as_ptr(), &mut st) == 0)
                .then(|| u64::from(st.f_bavail).saturating_mul(u64::from(st.f_frsize)))
        }
    });
    let mut line = Line::default();
    line.push(b"coordinator: the storage engine (RocksDB) aborted after a failed write: ");
    match free {
        Some(f) if f < LOW_SPACE_BYTES => {
            line.push(b"No space left on device (");
            line.number(f);
            line.push(b" bytes free on the data directory's disk). Free space and start it again: it loses nothing\n");
        }
        Some(f) => {
            line.push(b"a storage failure (");
            line.number(f);
            line.push(b" bytes free on the data directory's disk). Check the disk; replace the replica if it is damaged\n");
        }
        None => {
            line.push(b"a storage failure. Check the disk; replace the replica if it is damaged\n")
        }
    }
    // SAFETY: write(2) of a buffer on the stack, then _exit(2).
    unsafe {
        libc::write(2, line.buf.as_ptr().cast(), line.len);
        libc::_exit(74);
    }
}

/// A line built without allocating (a signal handler may not).
struct Line {
    buf: [u8; 512],
    len: usize,
}

impl Default for Line {
    fn default() -> Line {
        Line {
            buf: [0; 512],
            len: 0,
        }
    }
}

impl Line {
    fn push(&mut self, bytes: &[u8]) {
        let n = bytes.len().min(self.buf.len() - self.len);
        self.buf[self.len..self.len + n].copy_from_slice(&bytes[..n]);
        self.len += n;
    }

    fn number(&mut self, mut v: u64) {
        let mut digits = [0u8; 20];
        let mut i = digits.len();
        loop {
            i -= 1;
            digits[i] = b'0' + (v % 10) as u8;
            v /= 10;
            if v == 0 {
                break;
            }
        }
        self.push(&digits[i..]);
    }
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
        let out = child("a_panic_on_any_thread_stops_the_process", CHILD, "1");
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

    const ABORT_CHILD: &str = "BUDGET_STORAGE_ABORT_CHILD";

    /// Runs this test binary's test `name` alone as a child, with `var` set to `value`.
    fn child(name: &str, var: &str, value: &str) -> std::process::Output {
        Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                &format!("fail_stop::tests::{name}"),
                "--nocapture",
                "--test-threads=1",
            ])
            .env(var, value)
            .output()
            .unwrap()
    }

    /// With the storage abort handler installed too, an abort from outside our panic hook (as
    /// RocksDB's assertions call it) exits 74 with the storage failure named, and a panic
    /// still dies of SIGABRT.
    #[test]
    fn an_abort_in_the_storage_engine_exits_74_and_a_panic_still_aborts() {
        if let Some(how) = std::env::var_os(ABORT_CHILD) {
            super::install("coordinator");
            super::install_storage_abort(std::path::Path::new("."));
            if how == "panic" {
                panic!("planted panic");
            }
            // SAFETY: aborting the child process on purpose, as a C++ assertion does.
            unsafe { libc::abort() };
        }
        let child = |how: &str| {
            child(
                "an_abort_in_the_storage_engine_exits_74_and_a_panic_still_aborts",
                ABORT_CHILD,
                how,
            )
        };
        let out = child("abort");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(74), "{:?}: {stderr}", out.status);
        assert!(
            stderr.contains("storage engine (RocksDB) aborted"),
            "{stderr}"
        );
        assert!(
            stderr.contains("bytes free on the data directory"),
            "{stderr}"
        );
        let out = child("panic");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            out.status.signal(),
            Some(SIGABRT),
            "{:?}: {stderr}",
            out.status
        );
        assert!(stderr.contains("planted panic"), "{stderr}");
    }
}
