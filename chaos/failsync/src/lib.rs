//! A disk whose syncs fail, for fault tests: loaded into a process with
//! `LD_PRELOAD=libchaos_failsync.so`, it makes `fsync(2)` and `fdatasync(2)` fail with `EIO`
//! while the file named by `CHAOS_FAIL_SYNC_FILE` exists, and calls the C library's own
//! otherwise. The kernel reports a device's write errors this way: the data written since the
//! last successful sync may never reach the disk, and a program may not assume a later sync
//! makes it durable (PostgreSQL's "fsyncgate", 2018).
//!
//! RocksDB syncs its write-ahead log and tables with these calls, and so does Rust's
//! `File::sync_all`/`sync_data`; I/O submitted through io_uring does not pass through them.
//! The first failure is reported on standard error, once per process.

use std::ffi::{CStr, CString, c_int, c_void};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};

/// The variable that names the trigger file.
const TRIGGER_ENV: &str = "CHAOS_FAIL_SYNC_FILE";

type SyncFn = unsafe extern "C" fn(c_int) -> c_int;

fn trigger() -> Option<&'static CStr> {
    static PATH: OnceLock<Option<CString>> = OnceLock::new();
    PATH.get_or_init(|| {
        std::env::var_os(TRIGGER_ENV)
            .and_then(|p| CString::new(std::os::unix::ffi::OsStringExt::into_vec(p)).ok())
    })
    .as_deref()
}

fn triggered() -> bool {
    // SAFETY: `access` reads a NUL-terminated path we own; it has no other effect.
    trigger().is_some_and(|p| unsafe { libc::access(p.as_ptr(), libc::F_OK) } == 0)
}

/// The C library's own function `name` (the next definition after this library's).
fn next(name: &CStr) -> Option<SyncFn> {
    // SAFETY: dlsym with RTLD_NEXT and a NUL-terminated name only looks a symbol up.
    let p: *mut c_void = unsafe { libc::dlsym(libc::RTLD_NEXT, name.as_ptr()) };
    if p.is_null() {
        None
    } else {
        // SAFETY: `fsync` and `fdatasync` both have the C signature `int (int)`.
        Some(unsafe { std::mem::transmute::<*mut c_void, SyncFn>(p) })
    }
}

fn fail(call: &str, fd: c_int) -> c_int {
    static SAID: AtomicBool = AtomicBool::new(false);
    if !SAID.swap(true, Ordering::Relaxed) {
        eprintln!(
            "chaos-failsync: {call}({fd}) fails with EIO while {} exists (and every sync after it)",
            trigger().map_or(String::new(), |p| p.to_string_lossy().into_owned())
        );
    }
    // SAFETY: errno is this thread's own.
    unsafe { *libc::__errno_location() = libc::EIO };
    -1
}

fn pass(name: &CStr, fd: c_int) -> c_int {
    static FSYNC: OnceLock<Option<SyncFn>> = OnceLock::new();
    static FDATASYNC: OnceLock<Option<SyncFn>> = OnceLock::new();
    let cell = if name == c"fsync" { &FSYNC } else { &FDATASYNC };
    match cell.get_or_init(|| next(name)) {
        // SAFETY: the C library's function, called with the caller's own argument.
        Some(f) => unsafe { f(fd) },
        None => {
            // SAFETY: errno is this thread's own.
            unsafe { *libc::__errno_location() = libc::ENOSYS };
            -1
        }
    }
}

/// `fsync(2)`, failing with `EIO` while the trigger file exists.
///
/// # Safety
/// As the C library's `fsync`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn fsync(fd: c_int) -> c_int {
    if triggered() {
        return fail("fsync", fd);
    }
    pass(c"fsync", fd)
}

/// `fdatasync(2)`, failing with `EIO` while the trigger file exists.
///
/// # Safety
/// As the C library's `fdatasync`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn fdatasync(fd: c_int) -> c_int {
    if triggered() {
        return fail("fdatasync", fd);
    }
    pass(c"fdatasync", fd)
}
