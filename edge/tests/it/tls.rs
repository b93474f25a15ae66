//! The edge binary and its certificate: it bids for the region its certificate names, or does
//! not start.

use std::process::Command;

use shared::tls::{Authority, Role, Validity};

fn edge_with_certificate(role: Role, region: Option<&str>) -> std::process::Output {
    let dir = tempfile::tempdir().unwrap();
    let ca = Authority::create("test CA", Validity::days(2).unwrap()).unwrap();
    std::fs::write(dir.path().join("ca.pem"), ca.cert_pem()).unwrap();
    let (cert, key) = ca
        .issue(role, "edge-1", region, &[], Validity::days(2).unwrap())
        .unwrap()
        .write_to(dir.path(), "edge-1")
        .unwrap();
    let config = dir.path().join("edge.toml");
    std::fs::write(
        &config,
        format!(
            "edge_id = \"edge-1\"\nregion = \"eu-1\"\nlisten = \"127.0.0.1:0\"\n\
             coordinators = [\"127.0.0.1:1\"]\n\n[tls]\nca_file = \"{}\"\n\
             cert_file = \"{}\"\nkey_file = \"{}\"\n",
            dir.path().join("ca.pem").display(),
            cert.display(),
            key.display()
        ),
    )
    .unwrap();
    Command::new(env!("CARGO_BIN_EXE_edge"))
        .arg("--config")
        .arg(&config)
        .env("RUST_LOG", "warn")
        .output()
        .unwrap()
}

#[test]
fn the_edge_refuses_a_certificate_of_another_region_or_role() {
    let out = edge_with_certificate(Role::Edge, Some("us-1"));
    let text = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{text}");
    assert!(
        text.contains("the certificate is for region us-1; this edge bids for region eu-1"),
        "{text}"
    );
    let out = edge_with_certificate(Role::Operator, None);
    let text = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{text}");
    assert!(text.contains("grants the role operator"), "{text}");
}
