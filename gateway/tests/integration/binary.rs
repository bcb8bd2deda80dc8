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

#[tokio::test]
async fn binary_serves_a_config_file_until_sigterm() {
    use std::io::BufRead;
    use std::process::Stdio;

    let pki = crate::support::Pki::new();
    let files = pki.gateway_files("east");
    let dir = tempfile::tempdir().unwrap();
    let config_file = dir.path().join("east.pb");
    let s = crate::support::snapshot(9, "east", vec![], vec![], vec![]);
    std::fs::write(&config_file, prost::Message::encode_to_vec(&s)).unwrap();

    let mut child = Command::new(env!("CARGO_BIN_EXE_causeway-gateway"))
        .args(["--cluster", "east"])
        .arg("--cert")
        .arg(&files.cert)
        .arg("--key")
        .arg(&files.key)
        .arg("--trust-bundle")
        .arg(&files.bundle)
        .arg("--config-file")
        .arg(&config_file)
        .args([
            "--egress-listen",
            "127.0.0.1:0",
            "--peer-listen",
            "127.0.0.1:0",
        ])
        .args(["--admin-listen", "127.0.0.1:0"])
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The start-up line names the bound addresses.
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            if let Some(rest) = line.split("admin_addr=").nth(1) {
                let addr: String = rest
                    .chars()
                    .take_while(|c| !c.is_whitespace() && *c != '\u{1b}')
                    .collect();
                let _ = tx.send(addr);
            }
        }
    });
    let admin: std::net::SocketAddr = rx
        .recv_timeout(std::time::Duration::from_secs(20))
        .expect("the start-up line")
        .parse()
        .unwrap();
    let ready = crate::support::get(admin, "admin", "/ready").await;
    assert_eq!(ready.status, 200, "{}", ready.body);
    assert!(ready.body.contains("version 9"), "{}", ready.body);

    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let exit = tokio::task::spawn_blocking(move || child.wait().unwrap())
        .await
        .unwrap();
    assert_eq!(exit.code(), Some(0));
}
