//! The network namespace a topology runs in.
//!
//! Every fault tool that changes the network refuses to run in the machine's own namespace:
//! firewall rules there would reach the host's real traffic. A harness makes a private
//! namespace by running itself (and so every process it starts) under `unshare --net`, where
//! only a loopback device exists and no packet can leave the machine. Nodes listen on their own
//! `127.0.0.x` address and bind their outgoing sockets to it, so that rules can tell the nodes
//! apart by source and destination address.

use std::io;
use std::path::Path;
use std::process::Command;

/// The environment variable that marks a process re-run inside a private namespace.
pub const INSIDE_ENV: &str = "CHAOS_NETNS";

fn ns_inode(path: &str) -> io::Result<u64> {
    use std::os::unix::fs::MetadataExt;
    Ok(std::fs::metadata(Path::new(path))?.ino())
}

/// True if this process's network namespace is not the machine's: not the one the machine's
/// init process runs in or, where init's cannot be looked at (inside a new namespace it may
/// not be), not the one [`reexec_command`] was called from. `Err` if neither can be told.
pub fn is_private() -> io::Result<bool> {
    let own = ns_inode("/proc/self/ns/net")?;
    match ns_inode("/proc/1/ns/net") {
        Ok(init) => Ok(own != init),
        Err(e) => match std::env::var(INSIDE_ENV)
            .ok()
            .and_then(|v| v.parse::<u64>().ok())
        {
            Some(outer) => Ok(own != outer),
            None => Err(e),
        },
    }
}

/// Refuses unless this process is in a private namespace.
pub fn ensure_private() -> io::Result<()> {
    match is_private() {
        Ok(true) => Ok(()),
        Ok(false) => Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            "refusing to change the network of the machine's own namespace: run inside \
             `unshare --net` (the harness does this itself)",
        )),
        Err(e) => Err(io::Error::new(
            e.kind(),
            format!("cannot tell whether this is a private network namespace: {e}"),
        )),
    }
}

/// Mounts a tmpfs of `bytes` at `dir` (created if missing): a disk of known size that a fault
/// can fill. Refused unless this process has a mount namespace of its own (the harness's
/// [`reexec_command`] gives it one), so that nothing is ever mounted on the machine.
pub fn mount_small_disk(dir: &Path, bytes: u64) -> io::Result<()> {
    let own = ns_inode("/proc/self/ns/mnt")?;
    let private = match ns_inode("/proc/1/ns/mnt") {
        Ok(init) => own != init,
        Err(_) => reexecuted(),
    };
    if !private {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            "refusing to mount in the machine's own mount namespace: run inside `unshare \
             --mount` (the harness does this itself)",
        ));
    }
    std::fs::create_dir_all(dir)?;
    run(Command::new("mount")
        .args(["-t", "tmpfs", "-o"])
        .arg(format!("size={bytes},mode=0700"))
        .arg("tmpfs")
        .arg(dir))
}

/// Brings the namespace's loopback device up (a new namespace starts with it down).
pub fn loopback_up() -> io::Result<()> {
    ensure_private()?;
    run(Command::new("ip").args(["link", "set", "lo", "up"]))
}

/// The command that re-runs `program args` in a new private network namespace, marked with
/// [`INSIDE_ENV`] (holding this namespace's inode) so that it knows not to re-run itself again.
pub fn reexec_command(program: &Path, args: &[String]) -> Command {
    let outer = ns_inode("/proc/self/ns/net")
        .map(|i| i.to_string())
        .unwrap_or_default();
    let mut c = Command::new("unshare");
    // A mount namespace too (private propagation, unshare's default): a fault that mounts a
    // small file system for a node's data (a disk that fills up) cannot touch the machine's.
    c.arg("--net")
        .arg("--mount")
        .arg("--")
        .arg(program)
        .args(args)
        .env(INSIDE_ENV, outer);
    c
}

/// True in a process that [`reexec_command`] started.
pub fn reexecuted() -> bool {
    std::env::var_os(INSIDE_ENV).is_some()
}

/// Runs a command to completion; a non-zero exit is an error that quotes its stderr.
pub fn run(cmd: &mut Command) -> io::Result<()> {
    output(cmd).map(|_| ())
}

/// Runs a command to completion and returns its stdout; a non-zero exit is an error that quotes
/// its stderr.
pub fn output(cmd: &mut Command) -> io::Result<String> {
    let out = cmd.output().map_err(|e| {
        io::Error::new(
            e.kind(),
            format!(
                "{:?}: {e} (is it installed? `./dev setup` installs it)",
                cmd.get_program()
            ),
        )
    })?;
    if !out.status.success() {
        return Err(io::Error::other(format!(
            "{:?} {:?} failed ({}): {}",
            cmd.get_program(),
            cmd.get_args().collect::<Vec<_>>(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
