//! The process clock, which a test harness can skew while the process runs.
//!
//! Every reading of time in our binaries goes through a [`Clock`]. Normally it is the system's.
//! When the environment names a skew file ([`CLOCK_FILE_ENV`]), the clock follows it: the file
//! holds `offset_us=N rate_ppm=M` (either may be absent, meaning 0), and is re-read at most
//! every [`REREAD`]. The monotonic clock then runs `M` parts per million fast (negative: slow),
//! and wall time is offset by `N` µs plus the drift that rate has built up. Changing the rate
//! never makes the monotonic clock jump or go back: it bends at the moment of the change.
//!
//! Nothing safety-critical compares these readings across processes (DESIGN §5); skewing them
//! is how the chaos harness shows it.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The environment variable naming a skew file.
pub const CLOCK_FILE_ENV: &str = "BUDGET_CLOCK_FILE";

/// How often the skew file is read again, at most.
pub const REREAD: Duration = Duration::from_millis(50);

/// The largest rate error accepted, in ppm (a clock may run at half or one and a half speed).
pub const RATE_PPM_MAX: i64 = 500_000;

/// A skew: an offset of wall time and a rate error of both clocks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Skew {
    /// Added to wall time, in µs.
    pub offset_us: i64,
    /// Rate error in parts per million (clamped to ±[`RATE_PPM_MAX`]).
    pub rate_ppm: i64,
}

impl Skew {
    /// Reads `offset_us=N rate_ppm=M`; `None` if malformed.
    pub fn parse(text: &str) -> Option<Skew> {
        let mut s = Skew::default();
        for word in text.split_whitespace() {
            let (k, v) = word.split_once('=')?;
            let v: i64 = v.parse().ok()?;
            match k {
                "offset_us" => s.offset_us = v,
                "rate_ppm" => s.rate_ppm = v.clamp(-RATE_PPM_MAX, RATE_PPM_MAX),
                _ => return None,
            }
        }
        Some(s)
    }

    /// As the file holds it.
    pub fn to_file_text(self) -> String {
        format!("offset_us={} rate_ppm={}\n", self.offset_us, self.rate_ppm)
    }
}

struct Skewed {
    file: PathBuf,
    skew: Skew,
    /// Real monotonic time since the origin, and the skewed one, when the rate last changed.
    base_real: Duration,
    base_skewed: Duration,
    read_at: Option<Instant>,
}

impl Skewed {
    fn skewed_at(&self, real: Duration) -> Duration {
        let since = real.saturating_sub(self.base_real).as_nanos();
        let scaled = since * (1_000_000 + self.skew.rate_ppm) as u128 / 1_000_000;
        self.base_skewed + Duration::from_nanos(u64::try_from(scaled).unwrap_or(u64::MAX))
    }

    fn refresh(&mut self, now: Instant, real: Duration) {
        if self.read_at.is_some_and(|t| now.duration_since(t) < REREAD) {
            return;
        }
        self.read_at = Some(now);
        // A missing file is no skew; a malformed one keeps the last skew.
        let next = match std::fs::read_to_string(&self.file) {
            Ok(text) => match Skew::parse(&text) {
                Some(s) => s,
                None => return,
            },
            Err(_) => Skew::default(),
        };
        if next.rate_ppm != self.skew.rate_ppm {
            self.base_skewed = self.skewed_at(real);
            self.base_real = real;
        }
        self.skew = next;
    }
}

/// A process clock: monotonic readings since its creation, and wall time.
#[derive(Clone)]
pub struct Clock {
    origin: Instant,
    skewed: Option<Arc<Mutex<Skewed>>>,
    /// Readings from elsewhere (a simulation's virtual time), when set.
    read_by: Option<ReadBy>,
}

/// A source of clock readings: monotonic time and wall µs.
type ReadBy = Arc<dyn Fn() -> (Duration, i64) + Send + Sync>;

impl Default for Clock {
    fn default() -> Self {
        Clock::system()
    }
}

impl std::fmt::Debug for Clock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.read_by.is_some() {
            return f.write_str("Clock(read by a function)");
        }
        match &self.skewed {
            None => f.write_str("Clock(system)"),
            Some(s) => match s.lock() {
                Ok(s) => write!(f, "Clock(skewed by {})", s.file.display()),
                Err(_) => f.write_str("Clock(skewed)"),
            },
        }
    }
}

impl Clock {
    /// The system's clocks.
    pub fn system() -> Clock {
        Clock {
            origin: Instant::now(),
            skewed: None,
            read_by: None,
        }
    }

    /// A clock that follows the skew file `file` (which need not exist yet).
    pub fn skewed_by(file: impl Into<PathBuf>) -> Clock {
        Clock {
            origin: Instant::now(),
            skewed: Some(Arc::new(Mutex::new(Skewed {
                file: file.into(),
                skew: Skew::default(),
                base_real: Duration::ZERO,
                base_skewed: Duration::ZERO,
                read_at: None,
            }))),
            read_by: None,
        }
    }

    /// A clock whose readings `read` gives: monotonic time (never going back) and wall µs since
    /// the Unix epoch. For a simulation that runs real code on its own virtual time.
    pub fn read_by(read: impl Fn() -> (Duration, i64) + Send + Sync + 'static) -> Clock {
        Clock {
            origin: Instant::now(),
            skewed: None,
            read_by: Some(Arc::new(read)),
        }
    }

    /// Skewed by the file [`CLOCK_FILE_ENV`] names, or the system's if it names none.
    pub fn from_env() -> Clock {
        match std::env::var_os(CLOCK_FILE_ENV) {
            Some(f) if !f.is_empty() => Clock::skewed_by(f),
            _ => Clock::system(),
        }
    }

    /// True if a skew file drives it.
    pub fn is_skewable(&self) -> bool {
        self.skewed.is_some()
    }

    /// Monotonic time since the clock was made (never goes back).
    pub fn mono(&self) -> Duration {
        self.read().0
    }

    /// Wall time in µs since the Unix epoch.
    pub fn wall_us(&self) -> i64 {
        self.read().1
    }

    fn read(&self) -> (Duration, i64) {
        if let Some(read) = &self.read_by {
            return read();
        }
        let now = Instant::now();
        let real = now.duration_since(self.origin);
        let wall = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
            .unwrap_or(0);
        let Some(s) = &self.skewed else {
            return (real, wall);
        };
        let mut s = match s.lock() {
            Ok(s) => s,
            Err(poisoned) => poisoned.into_inner(),
        };
        s.refresh(now, real);
        let mono = s.skewed_at(real);
        let drift = i64::try_from(mono.as_micros()).unwrap_or(i64::MAX)
            - i64::try_from(real.as_micros()).unwrap_or(i64::MAX);
        (
            mono,
            wall.saturating_add(s.skew.offset_us).saturating_add(drift),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn skews_parse_and_print() {
        let s = Skew::parse("offset_us=-5000000 rate_ppm=250").unwrap();
        assert_eq!(
            s,
            Skew {
                offset_us: -5_000_000,
                rate_ppm: 250
            }
        );
        assert_eq!(Skew::parse(&s.to_file_text()), Some(s));
        assert_eq!(Skew::parse(""), Some(Skew::default()));
        assert_eq!(
            Skew::parse("rate_ppm=9000000").unwrap().rate_ppm,
            RATE_PPM_MAX
        );
        assert_eq!(Skew::parse("offset=1"), None);
        assert_eq!(Skew::parse("offset_us=x"), None);
    }

    #[test]
    fn a_rate_bends_the_monotonic_clock_without_a_jump() {
        let mut s = Skewed {
            file: PathBuf::new(),
            skew: Skew {
                offset_us: 0,
                rate_ppm: 100_000,
            },
            base_real: Duration::ZERO,
            base_skewed: Duration::ZERO,
            read_at: None,
        };
        // 10 % fast: 10 s real are 11 s.
        assert_eq!(
            s.skewed_at(Duration::from_secs(10)),
            Duration::from_secs(11)
        );
        // Switch to 10 % slow at 10 s: continuous there, then slower.
        s.base_skewed = s.skewed_at(Duration::from_secs(10));
        s.base_real = Duration::from_secs(10);
        s.skew.rate_ppm = -100_000;
        assert_eq!(
            s.skewed_at(Duration::from_secs(10)),
            Duration::from_secs(11)
        );
        assert_eq!(
            s.skewed_at(Duration::from_secs(20)),
            Duration::from_secs(20)
        );
    }

    #[test]
    fn a_skew_file_moves_wall_time_while_the_clock_runs() {
        let dir = std::env::temp_dir().join(format!("clock-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("skew");
        let clock = Clock::skewed_by(&file);
        let system = Clock::system();
        // No file yet: no skew (within the time between the two readings).
        assert!((clock.wall_us() - system.wall_us()).abs() < 1_000_000);
        let hour = 3_600_000_000;
        std::fs::write(
            &file,
            Skew {
                offset_us: hour,
                rate_ppm: 0,
            }
            .to_file_text(),
        )
        .unwrap();
        // Re-read within REREAD: wait for it, bounded.
        let deadline = Instant::now() + Duration::from_secs(2);
        while clock.wall_us() - system.wall_us() < hour / 2 {
            assert!(Instant::now() < deadline, "the skew file was never read");
            std::thread::sleep(REREAD / 5);
        }
        let d = clock.wall_us() - system.wall_us();
        assert!((hour - 1_000_000..hour + 1_000_000).contains(&d), "{d}");
        let m1 = clock.mono();
        std::fs::write(&file, "garbage").unwrap();
        std::thread::sleep(REREAD * 2);
        assert!(
            clock.wall_us() - system.wall_us() > hour / 2,
            "a malformed file keeps the skew"
        );
        assert!(clock.mono() >= m1);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
