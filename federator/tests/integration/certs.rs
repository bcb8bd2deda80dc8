//! `causeway certs`, run as the operator runs it: the files it writes verify with openssl, carry
//! the SPIFFE IDs, are never overwritten by accident, and let two gateways complete mTLS.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use causeway_api::spiffe::SpiffeId;
use causeway_api::tls::{self, ExpectedPeer, Identity, TrustBundle};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_rustls::rustls::pki_types::ServerName;
use tokio_rustls::{TlsAcceptor, TlsConnector};

const CLUSTERS: [&str; 2] = ["east", "west"];

fn causeway(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_causeway"))
        .args(args)
        .output()
        .expect("run causeway")
}

fn certs(out: &Path, extra: &[&str]) -> Output {
    let out = out.to_str().unwrap();
    let mut args = vec!["certs", "--out", out, "--clusters", "east,west"];
    args.extend_from_slice(extra);
    causeway(&args)
}

fn assert_success(out: &Output) {
    assert!(
        out.status.success(),
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn openssl(args: &[&str]) -> Output {
    Command::new("openssl")
        .args(args)
        .output()
        .expect("run openssl (is it installed?)")
}

/// Every regular file under `dir`, by path, with its contents.
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut files = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else {
                files.insert(path.clone(), std::fs::read(&path).unwrap());
            }
        }
    }
    files
}

fn p(path: PathBuf) -> String {
    path.to_str().unwrap().to_string()
}

#[test]
fn leaves_verify_with_openssl_and_carry_spiffe_ids() {
    let dir = tempfile::tempdir().unwrap();
    let out = certs(dir.path(), &["--shared-root"]);
    assert_success(&out);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("spiffe://east.causeway.mesh/ns/causeway-system/sa/causeway-gateway"),
        "{stdout}"
    );

    let root = dir.path().join("root-ca.pem");
    assert_eq!(
        std::fs::read(&root).unwrap(),
        std::fs::read(dir.path().join("bundle.pem")).unwrap()
    );
    for cluster in CLUSTERS {
        let cdir = dir.path().join(cluster);
        for (leaf, sa) in [
            ("gateway.pem", "causeway-gateway"),
            ("federator.pem", "causeway-federator"),
        ] {
            let verify = openssl(&[
                "verify",
                "-CAfile",
                &p(root.clone()),
                "-untrusted",
                &p(cdir.join("ca.pem")),
                &p(cdir.join(leaf)),
            ]);
            assert_success(&verify);

            // Both purposes: a gateway is a TLS server to its peers and a client of them.
            for purpose in ["sslserver", "sslclient"] {
                let verify = openssl(&[
                    "verify",
                    "-purpose",
                    purpose,
                    "-CAfile",
                    &p(root.clone()),
                    "-untrusted",
                    &p(cdir.join("ca.pem")),
                    &p(cdir.join(leaf)),
                ]);
                assert_success(&verify);
            }

            let san = openssl(&[
                "x509",
                "-noout",
                "-ext",
                "subjectAltName",
                "-in",
                &p(cdir.join(leaf)),
            ]);
            assert_success(&san);
            let san = String::from_utf8_lossy(&san.stdout);
            let want = format!("URI:spiffe://{cluster}.causeway.mesh/ns/causeway-system/sa/{sa}");
            assert!(san.contains(&want), "{leaf} of {cluster}: {san}");
        }

        // The chain file is the leaf, then the cluster CA.
        let chain = std::fs::read_to_string(cdir.join("gateway.pem")).unwrap();
        let ca = std::fs::read_to_string(cdir.join("ca.pem")).unwrap();
        assert_eq!(chain.matches("BEGIN CERTIFICATE").count(), 2);
        assert!(chain.ends_with(&ca));

        #[cfg(unix)]
        for key in ["ca.key", "gateway.key", "federator.key"] {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(cdir.join(key))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600, "{cluster}/{key}");
        }
    }

    // One cluster's leaf does not verify against another cluster's CA alone.
    let cross = openssl(&[
        "verify",
        "-partial_chain",
        "-CAfile",
        &p(dir.path().join("west/ca.pem")),
        &p(dir.path().join("east/gateway.pem")),
    ]);
    assert!(!cross.status.success());
}

#[test]
fn rerun_without_force_changes_nothing_and_force_replaces() {
    let dir = tempfile::tempdir().unwrap();
    assert_success(&certs(dir.path(), &["--shared-root"]));
    let before = snapshot(dir.path());
    assert_eq!(before.len(), 3 + 6 * CLUSTERS.len());

    let again = certs(dir.path(), &["--shared-root"]);
    assert!(!again.status.success());
    assert_eq!(again.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&again.stderr);
    assert!(stderr.starts_with("causeway: "), "{stderr}");
    let root = dir.path().join("root-ca.pem");
    assert!(stderr.contains(&p(root)), "{stderr}");
    assert!(stderr.contains("--force"), "{stderr}");
    assert_eq!(
        snapshot(dir.path()),
        before,
        "files changed without --force"
    );

    // Only one file in the way is enough to refuse.
    let dir2 = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir2.path().join("west")).unwrap();
    std::fs::write(dir2.path().join("west/gateway.key"), "keep me").unwrap();
    let blocked = certs(dir2.path(), &[]);
    assert!(!blocked.status.success());
    let stderr = String::from_utf8_lossy(&blocked.stderr);
    assert!(stderr.contains("gateway.key"), "{stderr}");
    assert_eq!(
        snapshot(dir2.path()).len(),
        1,
        "wrote files despite refusing"
    );

    let forced = certs(dir.path(), &["--shared-root", "--force"]);
    assert_success(&forced);
    let after = snapshot(dir.path());
    assert_eq!(
        after.keys().collect::<Vec<_>>(),
        before.keys().collect::<Vec<_>>()
    );
    for (path, contents) in &after {
        assert_ne!(contents, &before[path], "{} unchanged", path.display());
    }
}

#[test]
fn bad_cluster_name_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let out = causeway(&[
        "certs",
        "--out",
        dir.path().to_str().unwrap(),
        "--clusters",
        "east,East_1",
    ]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("East_1"), "{stderr}");
    assert_eq!(snapshot(dir.path()).len(), 0);
}

#[tokio::test]
async fn generated_gateways_complete_mtls_handshake() {
    let dir = tempfile::tempdir().unwrap();
    assert_success(&certs(dir.path(), &["--validity-days", "2"]));
    let bundle = TrustBundle::load(dir.path().join("bundle.pem")).unwrap();
    let gateway = |c: &str| {
        Identity::load(
            dir.path().join(c).join("gateway.pem"),
            dir.path().join(c).join("gateway.key"),
        )
        .unwrap()
    };
    let east_id = SpiffeId::gateway("east.causeway.mesh").unwrap();
    let west_id = SpiffeId::gateway("west.causeway.mesh").unwrap();

    let server = tls::server_config(&gateway("east"), &bundle, &[b"h2"]).unwrap();
    let client = tls::client_config(
        &gateway("west"),
        &bundle,
        ExpectedPeer::Exact(east_id.clone()),
        &[b"h2"],
    )
    .unwrap();

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accept = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let mut tls = TlsAcceptor::from(server).accept(tcp).await.unwrap();
        let peer = tls::peer_spiffe_id(tls.get_ref().1.peer_certificates().unwrap()).unwrap();
        let mut buf = [0u8; 4];
        tls.read_exact(&mut buf).await.unwrap();
        tls.write_all(&buf).await.unwrap();
        tls.shutdown().await.unwrap();
        peer
    });

    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = ServerName::IpAddress(addr.ip().into());
    let mut tls = TlsConnector::from(client).connect(name, tcp).await.unwrap();
    let conn = tls.get_ref().1;
    assert_eq!(conn.alpn_protocol(), Some(&b"h2"[..]));
    assert_eq!(
        tls::peer_spiffe_id(conn.peer_certificates().unwrap()).unwrap(),
        east_id
    );
    tls.write_all(b"ping").await.unwrap();
    let mut buf = [0u8; 4];
    tls.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"ping");

    assert_eq!(accept.await.unwrap(), west_id);
}
