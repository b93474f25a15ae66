//! `budgetctl` as a user runs it: the real binary, its output and its exit codes.

mod audit;
mod clock;
mod cluster;
mod disk;
mod regions;
mod tls;

/// The value of metric `name` on a node's `/metrics` at `127.0.0.1:port`, if it answers.
fn node_metric(port: u16, name: &str) -> Option<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(std::time::Duration::from_secs(2)))
        .ok()?;
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .ok()?;
    let mut body = String::new();
    s.read_to_string(&mut body).ok()?;
    body.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ').map(str::to_string))
}
