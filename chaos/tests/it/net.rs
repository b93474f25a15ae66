use std::io::ErrorKind;
use std::net::{Ipv4Addr, UdpSocket};
use std::time::Duration;

use chaos::net::{Action, Firewall};

use crate::reran_in_private_netns;

const A: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);
const B: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 3);

fn udp(at: Ipv4Addr) -> UdpSocket {
    let s = UdpSocket::bind((at, 0)).unwrap();
    // Loopback delivers a datagram within the sender's `send_to` call, so anything not queued
    // by the time the receiver looks is not coming; the timeout only ends the read.
    s.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
    s
}

/// Sends `n` datagrams from `from` to `to` and returns how many arrived.
fn send_and_count(from: &UdpSocket, to: &UdpSocket, n: u32) -> u32 {
    let dest = to.local_addr().unwrap();
    let mut got = 0;
    let mut buf = [0u8; 64];
    // In small rounds, so that the receive buffer never overflows (that would look like loss).
    for round in 0..n.div_ceil(20) {
        let k = 20.min(n - round * 20);
        for i in 0..k {
            from.send_to(&(round * 20 + i).to_be_bytes(), dest).unwrap();
        }
        loop {
            match to.recv_from(&mut buf) {
                Ok(_) => got += 1,
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => break,
                Err(e) => panic!("recv: {e}"),
            }
        }
    }
    got
}

#[test]
fn a_one_way_partition_drops_only_its_direction_until_healed() {
    if reran_in_private_netns("net::a_one_way_partition_drops_only_its_direction_until_healed") {
        return;
    }
    let (a, b) = (udp(A), udp(B));
    let mut fw = Firewall::new().unwrap();
    assert_eq!(send_and_count(&b, &a, 10), 10, "before the fault");
    let f = fw.apply(&[B], &[A], Action::Drop).unwrap();
    assert_eq!(send_and_count(&b, &a, 10), 0, "B -> A is cut");
    assert_eq!(send_and_count(&a, &b, 10), 10, "A -> B still flows");
    assert_eq!(
        fw.packets(&f).unwrap(),
        10,
        "the rule dropped exactly those"
    );
    fw.heal(&f).unwrap();
    assert_eq!(send_and_count(&b, &a, 10), 10, "healed");
    // A two-way partition.
    let both = fw.partition(&[A], &[B]).unwrap();
    assert_eq!(send_and_count(&b, &a, 5) + send_and_count(&a, &b, 5), 0);
    assert_eq!(
        fw.packets(&both[0]).unwrap() + fw.packets(&both[1]).unwrap(),
        10
    );
    fw.heal_all().unwrap();
    assert_eq!(send_and_count(&a, &b, 5), 5);
}

#[test]
fn random_loss_drops_some_and_counts_each() {
    if reran_in_private_netns("net::random_loss_drops_some_and_counts_each") {
        return;
    }
    let (a, b) = (udp(A), udp(B));
    let mut fw = Firewall::new().unwrap();
    let f = fw.apply(&[B], &[A], Action::Loss(30)).unwrap();
    let got = send_and_count(&b, &a, 400);
    let dropped = fw.packets(&f).unwrap();
    assert_eq!(
        u64::from(got) + dropped,
        400,
        "every datagram arrived or was dropped by the rule"
    );
    // 30 % of 400 is 120; six standard deviations (±55) make a false failure vanishingly rare.
    assert!(
        (65..=175).contains(&dropped),
        "{dropped} of 400 dropped at 30 %"
    );
    assert!(
        Firewall::new()
            .unwrap()
            .apply(&[B], &[A], Action::Loss(0))
            .is_err()
    );
}

#[test]
fn duplication_delivers_each_packet_twice() {
    if reran_in_private_netns("net::duplication_delivers_each_packet_twice") {
        return;
    }
    let (a, b) = (udp(A), udp(B));
    let mut fw = Firewall::new().unwrap();
    let f = fw.apply(&[B], &[A], Action::Duplicate).unwrap();
    assert_eq!(send_and_count(&b, &a, 40), 80);
    // The copy passes the same hook and is counted too, but the kernel never copies a copy.
    assert_eq!(fw.packets(&f).unwrap(), 80);
    fw.heal(&f).unwrap();
    assert_eq!(send_and_count(&b, &a, 40), 40, "healed");
}

#[test]
fn dropping_data_loses_the_answers_and_lets_the_requests_through() {
    use std::io::{Read, Write};
    if reran_in_private_netns("net::dropping_data_loses_the_answers_and_lets_the_requests_through")
    {
        return;
    }
    // A server on A counts 8-byte requests and answers each with 300 bytes.
    let listener = std::net::TcpListener::bind((A, 0)).unwrap();
    let addr = listener.local_addr().unwrap();
    let (seen_tx, seen) = std::sync::mpsc::channel();
    let server = std::thread::spawn(move || {
        let (mut c, _) = listener.accept().unwrap();
        c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut n = 0u32;
        let mut req = [0u8; 8];
        while c.read_exact(&mut req).is_ok() {
            n += 1;
            let _ = seen_tx.send(n);
            if c.write_all(&[7u8; 300]).is_err() {
                break;
            }
            if n == 40 {
                break;
            }
        }
        n
    });
    let mut c = connect_from_b(addr);
    let mut fw = Firewall::new().unwrap();
    let f = fw.apply(&[A], &[B], Action::DropData).unwrap();
    c.set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    for i in 0..20u64 {
        c.write_all(&i.to_be_bytes()).unwrap();
        std::thread::sleep(Duration::from_millis(20));
    }
    // Every request reached the server while its answers were being dropped.
    let mut arrived = 0;
    while arrived < 20 {
        arrived = seen
            .recv_timeout(Duration::from_secs(2))
            .expect("the requests arrive during the fault");
    }
    let mut buf = [0u8; 300];
    assert!(c.read(&mut buf).is_err(), "no answer gets through");
    assert!(fw.packets(&f).unwrap() > 0, "answers were dropped");
    fw.heal(&f).unwrap();
    // The answers come once healed (retransmitted), and the rest of the requests too.
    for i in 20..40u64 {
        c.write_all(&i.to_be_bytes()).unwrap();
    }
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut got = 0usize;
    while got < 40 * 300 {
        got += c.read(&mut vec![0u8; 4096]).unwrap();
    }
    assert_eq!(server.join().unwrap(), 40);
}

/// A TCP connection to `addr` from B's address (std has no bind-before-connect, and on
/// loopback the kernel would pick 127.0.0.1).
fn connect_from_b(addr: std::net::SocketAddr) -> std::net::TcpStream {
    use std::os::fd::FromRawFd;
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0);
        assert!(fd >= 0);
        let bind = libc::sockaddr_in {
            sin_family: libc::AF_INET as u16,
            sin_port: 0,
            sin_addr: libc::in_addr {
                s_addr: u32::from(B).to_be(),
            },
            sin_zero: [0; 8],
        };
        let std::net::SocketAddr::V4(v4) = addr else {
            panic!("IPv4 only")
        };
        let to = libc::sockaddr_in {
            sin_family: libc::AF_INET as u16,
            sin_port: v4.port().to_be(),
            sin_addr: libc::in_addr {
                s_addr: u32::from(*v4.ip()).to_be(),
            },
            sin_zero: [0; 8],
        };
        let len = std::mem::size_of::<libc::sockaddr_in>() as u32;
        assert_eq!(
            libc::bind(fd, (&raw const bind).cast(), len),
            0,
            "bind to {B}"
        );
        assert_eq!(libc::connect(fd, (&raw const to).cast(), len), 0, "connect");
        std::net::TcpStream::from_raw_fd(fd)
    }
}

#[test]
fn the_machines_own_namespace_is_refused() {
    if chaos::netns::reexecuted() {
        return;
    }
    if chaos::netns::is_private().unwrap_or(false) {
        // The whole test binary already runs in a private namespace: nothing to show here.
        return;
    }
    let err = Firewall::new().err().expect("refused");
    assert_eq!(err.kind(), ErrorKind::PermissionDenied, "{err}");
}
