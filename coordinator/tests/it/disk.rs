//! A real coordinator process on a damaged database refuses to start, with the exit status
//! and the words an operator's supervisor and an operator need (`coordinator --help`).

use std::io::Read;
use std::net::TcpListener;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The node's `budget_raft_applied_index`, if its metrics answer.
fn applied(metrics_port: u16) -> Option<u64> {
    crate::node_metric(metrics_port, "budget_raft_applied_index")
        .and_then(|v| v.trim().parse().ok())
}

fn coordinator(data: &Path, metrics: u16) -> Command {
    let port = free_port();
    let mut c = Command::new(env!("CARGO_BIN_EXE_coordinator"));
    c.args(["--region", "disk", "--node-id", "1", "--insecure-plaintext"])
        .arg("--listen")
        .arg(format!("127.0.0.1:{port}"))
        .arg("--metrics-listen")
        .arg(format!("127.0.0.1:{metrics}"))
        .arg("--data-dir")
        .arg(data)
        .arg("--init")
        .arg(format!("1=127.0.0.1:{port}"));
    c
}

#[test]
fn a_coordinator_on_a_damaged_database_refuses_to_start_and_says_to_replace_it() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("node");
    let metrics = free_port();
    let mut child = coordinator(&data, metrics)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // A one-node region records its membership and its rules: entries synced to its log.
    let deadline = Instant::now() + Duration::from_secs(30);
    while applied(metrics).unwrap_or(0) < 2 {
        assert!(
            Instant::now() < deadline,
            "the node applied nothing in 30 s"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    // Bit rot in every write-ahead log and table file.
    let mut damaged = 0;
    for e in std::fs::read_dir(data.join("db")).unwrap() {
        let path = e.unwrap().path();
        let ext = path.extension().map(|x| x.to_string_lossy().into_owned());
        if !matches!(ext.as_deref(), Some("log" | "sst")) {
            continue;
        }
        let mut bytes = std::fs::read(&path).unwrap();
        if bytes.len() > 64 {
            bytes[20] ^= 0xff;
            std::fs::write(&path, bytes).unwrap();
            damaged += 1;
        }
    }
    assert!(damaged > 0, "no database file to damage");
    let mut again = coordinator(&data, free_port())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(s) = again.try_wait().unwrap() {
            break s;
        }
        if Instant::now() >= deadline {
            let _ = again.kill();
            let _ = again.wait();
            panic!("a coordinator on a damaged database still runs after 30 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut stderr = String::new();
    again
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert_eq!(status.code(), Some(65), "{stderr}");
    assert!(stderr.contains("is damaged"), "{stderr}");
    assert!(stderr.contains("replace it"), "{stderr}");
}
