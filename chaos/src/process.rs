//! Processes of a topology: start, kill (SIGKILL), pause (SIGSTOP), resume (SIGCONT), restart.
//! Only processes this module started are ever signalled, by their own pid.

use std::ffi::OsString;
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

/// How to start a process again and again.
#[derive(Clone, Debug)]
pub struct Spec {
    /// A name for logs and reports (`coordinator-1`).
    pub name: String,
    /// The program.
    pub program: PathBuf,
    /// Its arguments.
    pub args: Vec<OsString>,
    /// Extra environment.
    pub env: Vec<(OsString, OsString)>,
    /// Where its stdout and stderr go (appended across restarts).
    pub log: PathBuf,
}

/// One process of a topology.
pub struct Proc {
    spec: Spec,
    child: Option<Child>,
    starts: u32,
    exited: Option<std::process::ExitStatus>,
}

/// What a process is doing, from `/proc/PID/stat`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    /// Running or sleeping.
    Live,
    /// Stopped by a signal (paused).
    Stopped,
    /// Not running (never started, killed, or exited).
    Gone,
}

fn signal(pid: u32, sig: libc::c_int) -> io::Result<()> {
    let pid = libc::pid_t::try_from(pid)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "pid out of range"))?;
    // SAFETY: kill(2) has no memory effects; the pid is one of our own children.
    if unsafe { libc::kill(pid, sig) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

fn open_log(path: &Path) -> io::Result<File> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    File::options().create(true).append(true).open(path)
}

impl Proc {
    /// Starts the process.
    pub fn start(spec: Spec) -> io::Result<Proc> {
        let mut p = Proc {
            spec,
            child: None,
            starts: 0,
            exited: None,
        };
        p.spawn()?;
        Ok(p)
    }

    fn spawn(&mut self) -> io::Result<()> {
        let log = open_log(&self.spec.log)?;
        let child = Command::new(&self.spec.program)
            .args(&self.spec.args)
            .envs(self.spec.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!(
                        "starting {} ({}): {e}",
                        self.spec.name,
                        self.spec.program.display()
                    ),
                )
            })?;
        self.child = Some(child);
        self.starts += 1;
        self.exited = None;
        Ok(())
    }

    /// Its name.
    pub fn name(&self) -> &str {
        &self.spec.name
    }

    /// Where its output goes.
    pub fn log_path(&self) -> &Path {
        &self.spec.log
    }

    /// Its pid while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// How many times it was started.
    pub fn starts(&self) -> u32 {
        self.starts
    }

    /// How its last run ended, once [`Proc::state`] has seen it exit by itself (`None` while
    /// it runs, after it was killed, or before it was looked at).
    pub fn exit_status(&self) -> Option<std::process::ExitStatus> {
        self.exited
    }

    /// What it is doing now (reaps it if it exited).
    pub fn state(&mut self) -> State {
        let Some(child) = self.child.as_mut() else {
            return State::Gone;
        };
        if let Ok(Some(status)) = child.try_wait() {
            self.child = None;
            self.exited = Some(status);
            return State::Gone;
        }
        let stat =
            std::fs::read_to_string(format!("/proc/{}/stat", child.id())).unwrap_or_default();
        // The state letter follows the command name, which is in parentheses.
        match stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.trim_start().chars().next())
        {
            Some('T') | Some('t') => State::Stopped,
            Some('Z') | Some('X') | None => State::Gone,
            Some(_) => State::Live,
        }
    }

    /// SIGKILL, then reap. Nothing if it is not running.
    pub fn kill(&mut self) -> io::Result<()> {
        if let Some(mut child) = self.child.take() {
            // A stopped process dies of SIGKILL too.
            child.kill()?;
            child.wait()?;
        }
        Ok(())
    }

    /// SIGSTOP: the process stays, frozen, until [`Proc::resume`]. Returns once the kernel
    /// shows it stopped (signals are delivered asynchronously), or an error after two seconds.
    pub fn pause(&mut self) -> io::Result<()> {
        self.signal_until(libc::SIGSTOP, State::Stopped)
    }

    /// SIGCONT. Returns once the kernel shows it running again.
    pub fn resume(&mut self) -> io::Result<()> {
        self.signal_until(libc::SIGCONT, State::Live)
    }

    fn signal_until(&mut self, sig: libc::c_int, want: State) -> io::Result<()> {
        let Some(pid) = self.pid() else {
            return Err(io::Error::other(format!(
                "{} is not running",
                self.spec.name
            )));
        };
        signal(pid, sig)?;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
        loop {
            let now = self.state();
            if now == want {
                return Ok(());
            }
            if now == State::Gone || std::time::Instant::now() >= deadline {
                return Err(io::Error::other(format!(
                    "{} (pid {pid}) is {now:?} after the signal, not {want:?}",
                    self.spec.name
                )));
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
    }

    /// Starts it again if it is not running.
    pub fn restart(&mut self) -> io::Result<()> {
        if self.state() == State::Gone {
            self.spawn()?;
        }
        Ok(())
    }

    /// SIGTERM, then waits for the exit; SIGKILL after `grace`.
    pub fn stop(&mut self, grace: std::time::Duration) -> io::Result<()> {
        let Some(pid) = self.pid() else {
            return Ok(());
        };
        let _ = signal(pid, libc::SIGCONT);
        signal(pid, libc::SIGTERM)?;
        let deadline = std::time::Instant::now() + grace;
        while std::time::Instant::now() < deadline {
            if self.state() == State::Gone {
                return Ok(());
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        self.kill()
    }
}

/// A process left running when its handle goes is killed: a harness never leaks processes.
impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.kill();
    }
}
