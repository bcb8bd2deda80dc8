//! The `causeway-gateway` binary: bad configuration exits 64 naming the field.

use std::process::Command;

#[test]
fn bad_config_exits_64_naming_the_field() {
    let out = Command::new(env!("CARGO_BIN_EXE_causeway-gateway"))
        .args([
            "--cluster",
            "East_1",
            "--cert",
            "c",
            "--key",
            "k",
            "--trust-bundle",
            "b",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("cluster: "), "{stderr}");

    let out = Command::new(env!("CARGO_BIN_EXE_causeway-gateway"))
        .args([
            "--cluster",
            "east",
            "--cert",
            "c",
            "--key",
            "k",
            "--trust-bundle",
            "b",
        ])
        .args(["--federator", "http://fed:15010"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("federator: "), "{stderr}");
}

#[test]
fn missing_certificate_file_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_causeway-gateway"))
        .args(["--cluster", "east", "--trust-bundle", "b"])
        .arg("--cert")
        .arg(dir.path().join("gateway.pem"))
        .arg("--key")
        .arg(dir.path().join("gateway.key"))
        .args([
            "--egress-listen",
            "127.0.0.1:0",
            "--peer-listen",
            "127.0.0.1:0",
        ])
        .args(["--admin-listen", "127.0.0.1:0"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("gateway.pem"), "{stderr}");
}
