//! A skew file given to a real coordinator process reaches it: the node's own clock, which
//! stamps its proposals and runs its reclaim timers, shows the offset, and follows a change of
//! the file while it runs.

use std::net::TcpListener;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use shared::clock::{CLOCK_FILE_ENV, Skew};

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn now_us() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_micros() as i64
}

/// The node's `budget_clock_wall_seconds`, in µs, if its metrics answer.
fn node_clock(metrics_port: u16) -> Option<i64> {
    crate::node_metric(metrics_port, "budget_clock_wall_seconds")
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map(|s| (s * 1e6).round() as i64)
}

/// Waits (bounded) until the node's clock is `offset` µs from ours, within a second.
fn until_offset(metrics_port: u16, offset: i64) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(t) = node_clock(metrics_port)
            && (t - now_us() - offset).abs() < 1_000_000
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the node's clock never showed an offset of {offset} µs (last: {:?})",
            node_clock(metrics_port).map(|t| t - now_us())
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_skew_file_reaches_the_running_node() {
    let dir = tempfile::tempdir().unwrap();
    let skew = dir.path().join("skew");
    let hour = 3_600_000_000i64;
    std::fs::write(
        &skew,
        Skew {
            offset_us: hour,
            rate_ppm: 0,
        }
        .to_file_text(),
    )
    .unwrap();
    let metrics = free_port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_coordinator"))
        .args(["--region", "skew", "--node-id", "1", "--insecure-plaintext"])
        .arg("--listen")
        .arg(format!("127.0.0.1:{}", free_port()))
        .arg("--metrics-listen")
        .arg(format!("127.0.0.1:{metrics}"))
        .arg("--data-dir")
        .arg(dir.path().join("node"))
        .env(CLOCK_FILE_ENV, &skew)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    until_offset(metrics, hour);
    // Changed while it runs: an hour behind now.
    std::fs::write(
        &skew,
        Skew {
            offset_us: -hour,
            rate_ppm: 0,
        }
        .to_file_text(),
    )
    .unwrap();
    until_offset(metrics, -hour);
    child.kill().unwrap();
    child.wait().unwrap();
}
