use std::net::{Ipv4Addr, UdpSocket};
use std::time::{Duration, Instant};

use chaos::delay::Delay;

use crate::reran_in_private_netns;

const A: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);
const B: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 3);

#[test]
fn a_delay_holds_packets_and_jitter_reorders_them() {
    if reran_in_private_netns("delay::a_delay_holds_packets_and_jitter_reorders_them") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let to = UdpSocket::bind((A, 0)).unwrap();
    let from = UdpSocket::bind((B, 0)).unwrap();
    to.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let d = Delay::start(
        env!("CARGO_BIN_EXE_chaos").as_ref(),
        7,
        &[B],
        &[A],
        Duration::from_millis(40),
        Duration::from_millis(30),
        Duration::from_secs(20),
        dir.path().join("helper.log"),
    )
    .unwrap();
    let start = Instant::now();
    let n = 60u32;
    for i in 0..n {
        let sent = start.elapsed().as_micros() as u64;
        let mut msg = [0u8; 12];
        msg[..4].copy_from_slice(&i.to_be_bytes());
        msg[4..].copy_from_slice(&sent.to_be_bytes());
        from.send_to(&msg, to.local_addr().unwrap()).unwrap();
        std::thread::sleep(Duration::from_millis(1));
    }
    let mut order = Vec::new();
    let mut latencies = Vec::new();
    let mut buf = [0u8; 12];
    while order.len() < n as usize {
        let got = to.recv(&mut buf).expect("every delayed datagram arrives");
        assert_eq!(got, 12);
        order.push(u32::from_be_bytes(buf[..4].try_into().unwrap()));
        let sent = u64::from_be_bytes(buf[4..].try_into().unwrap());
        latencies.push(start.elapsed().as_micros() as u64 - sent);
    }
    latencies.sort();
    let median = latencies[latencies.len() / 2];
    assert!(
        latencies[0] >= 9_000,
        "held at least 40 − 30 ms: shortest {} µs",
        latencies[0]
    );
    // At least the mean's lower half; the upper bound only catches a helper that never lets go
    // (a busy machine may release late, never early).
    assert!(
        (25_000..=500_000).contains(&median),
        "median {median} µs for 40 ± 30 ms"
    );
    let inversions = order.windows(2).filter(|w| w[0] > w[1]).count();
    assert!(
        inversions > 0,
        "jitter of 30 ms over 1 ms gaps reorders: {order:?}"
    );
    assert!(d.packets().unwrap() >= u64::from(n), "the rule queued them");
    d.heal().unwrap();
    // Healed: the queueing rule is gone and traffic flows.
    let rules = std::process::Command::new("iptables")
        .args(["-S", "INPUT"])
        .output()
        .unwrap();
    assert!(
        !String::from_utf8_lossy(&rules.stdout).contains("NFQUEUE"),
        "rule left behind"
    );
    from.send_to(b"x", to.local_addr().unwrap()).unwrap();
    to.recv(&mut buf).unwrap();
}
