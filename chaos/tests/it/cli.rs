use std::process::Command;

fn chaos(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_chaos"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn the_cli_explains_itself_writes_skews_and_refuses_the_host_network() {
    let (code, out, _) = chaos(&["--help"]);
    assert_eq!(code, 0);
    for cmd in [
        "shell",
        "partition",
        "loss",
        "duplicate",
        "heal",
        "delay-helper",
        "skew",
    ] {
        assert!(out.contains(cmd), "--help lacks {cmd}");
    }
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("skew");
    let f = file.to_str().unwrap();
    let (code, _, _) = chaos(&[
        "skew",
        "--file",
        f,
        "--offset-us",
        "-7000000",
        "--rate-ppm",
        "200",
    ]);
    assert_eq!(code, 0);
    let skew = shared::clock::Skew::parse(&std::fs::read_to_string(&file).unwrap()).unwrap();
    assert_eq!((skew.offset_us, skew.rate_ppm), (-7_000_000, 200));
    if !chaos::netns::is_private().unwrap_or(true) {
        let (code, _, err) = chaos(&["partition", "--from", "127.0.0.2", "--to", "127.0.0.3"]);
        assert_eq!(code, 1);
        assert!(err.contains("refusing to change the network"), "{err}");
    }
    let (code, _, err) = chaos(&[
        "loss",
        "--from",
        "127.0.0.2",
        "--to",
        "nope",
        "--percent",
        "5",
    ]);
    assert_eq!(code, 2, "a bad address is a usage error");
    assert!(err.contains("nope"), "{err}");
}
