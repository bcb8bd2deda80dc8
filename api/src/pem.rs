//! Loading certificates, private keys and trust bundles from PEM.
//!
//! Uses rustls-pki-types' [`PemObject`] (rustls-pemfile is unmaintained). Every error names
//! where the PEM came from (a file path, or the label a caller gave for in-memory PEM, such as
//! "trust bundle of cluster west") and what was wrong with it.

use std::io;
use std::path::{Path, PathBuf};

use rustls_pki_types::pem::{self, PemObject};
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// Why PEM could not be loaded. `origin` is the file path or the caller's label.
#[derive(Debug, thiserror::Error)]
pub enum PemError {
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{origin}: no certificate found (expected a \"BEGIN CERTIFICATE\" PEM section)")]
    NoCertificate { origin: String },
    #[error(
        "{origin}: no private key found (expected a \"BEGIN PRIVATE KEY\", \
         \"BEGIN EC PRIVATE KEY\" or \"BEGIN RSA PRIVATE KEY\" PEM section)"
    )]
    NoPrivateKey { origin: String },
    #[error("{origin}: invalid PEM: {source}")]
    Parse {
        origin: String,
        #[source]
        source: pem::Error,
    },
}

// === files ===

/// All certificates in a PEM file, in file order (for a chain: the leaf first).
pub fn load_certs(path: impl AsRef<Path>) -> Result<Vec<CertificateDer<'static>>, PemError> {
    let path = path.as_ref();
    certs_from_pem(&read(path)?, &path.display().to_string())
}

/// The first private key (PKCS#8, PKCS#1 or SEC1) in a PEM file.
pub fn load_private_key(path: impl AsRef<Path>) -> Result<PrivateKeyDer<'static>, PemError> {
    let path = path.as_ref();
    private_key_from_pem(&read(path)?, &path.display().to_string())
}

/// The CA certificates of a trust bundle file (one or more concatenated certificates).
///
/// This only decodes PEM; `tls::TrustBundle` checks that each one is usable as a trust anchor.
pub fn load_trust_bundle(path: impl AsRef<Path>) -> Result<Vec<CertificateDer<'static>>, PemError> {
    load_certs(path)
}

fn read(path: &Path) -> Result<Vec<u8>, PemError> {
    std::fs::read(path).map_err(|source| PemError::Read {
        path: path.to_path_buf(),
        source,
    })
}

// === bytes ===

/// All certificates in PEM text; `origin` names where the text came from, for errors.
pub fn certs_from_pem(pem: &[u8], origin: &str) -> Result<Vec<CertificateDer<'static>>, PemError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| parse_error(origin, source))?;
    if certs.is_empty() {
        return Err(PemError::NoCertificate {
            origin: origin.to_string(),
        });
    }
    Ok(certs)
}

/// The first private key in PEM text; `origin` names where the text came from, for errors.
pub fn private_key_from_pem(pem: &[u8], origin: &str) -> Result<PrivateKeyDer<'static>, PemError> {
    PrivateKeyDer::from_pem_slice(pem).map_err(|source| match source {
        pem::Error::NoItemsFound => PemError::NoPrivateKey {
            origin: origin.to_string(),
        },
        source => parse_error(origin, source),
    })
}

/// The CA certificates of a trust bundle in PEM text.
pub fn trust_bundle_from_pem(
    pem: &[u8],
    origin: &str,
) -> Result<Vec<CertificateDer<'static>>, PemError> {
    certs_from_pem(pem, origin)
}

fn parse_error(origin: &str, source: pem::Error) -> PemError {
    PemError::Parse {
        origin: origin.to_string(),
        source,
    }
}

/// Modification time and size of each file (`None`: unreadable): polled to see when
/// certificate, key, bundle or issuer files change (gateway and federator reload them).
pub type FileStamp = Vec<Option<(std::time::SystemTime, u64)>>;

/// The [`FileStamp`] of `paths` now.
pub fn file_stamp(paths: &[&Path]) -> FileStamp {
    paths
        .iter()
        .map(|p| {
            std::fs::metadata(p)
                .ok()
                .and_then(|m| Some((m.modified().ok()?, m.len())))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert_and_key() -> (String, String) {
        let ck = rcgen::generate_simple_self_signed(vec!["example.test".to_string()]).unwrap();
        (ck.cert.pem(), ck.signing_key.serialize_pem())
    }

    fn write(dir: &tempfile::TempDir, name: &str, contents: &str) -> PathBuf {
        let path = dir.path().join(name);
        std::fs::write(&path, contents).unwrap();
        path
    }

    #[test]
    fn loads_certs_key_and_bundle_from_files() {
        let dir = tempfile::tempdir().unwrap();
        let (cert1, key) = cert_and_key();
        let (cert2, _) = cert_and_key();
        let chain = write(&dir, "chain.pem", &format!("{cert1}{cert2}"));
        let key_path = write(&dir, "key.pem", &key);

        let certs = load_certs(&chain).unwrap();
        assert_eq!(certs.len(), 2);
        assert_eq!(certs[0], certs_from_pem(cert1.as_bytes(), "x").unwrap()[0]);
        assert!(matches!(
            load_private_key(&key_path).unwrap(),
            PrivateKeyDer::Pkcs8(_)
        ));
        assert_eq!(load_trust_bundle(&chain).unwrap().len(), 2);
    }

    #[test]
    fn missing_file_names_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nope.pem");
        let err = load_certs(&path).unwrap_err();
        assert!(
            matches!(&err, PemError::Read { source, .. } if source.kind() == io::ErrorKind::NotFound)
        );
        let shown = err.to_string();
        assert!(shown.contains(&path.display().to_string()), "{shown}");
        assert!(shown.starts_with("cannot read "), "{shown}");

        let err = load_private_key(&path).unwrap_err();
        assert!(err.to_string().contains("nope.pem"));
    }

    #[test]
    fn file_without_certificate_names_path() {
        let dir = tempfile::tempdir().unwrap();
        let (_, key) = cert_and_key();
        let path = write(&dir, "only-key.pem", &key);
        let err = load_certs(&path).unwrap_err();
        assert!(matches!(err, PemError::NoCertificate { .. }), "{err:?}");
        let shown = err.to_string();
        assert!(shown.contains("only-key.pem"), "{shown}");
        assert!(shown.contains("no certificate"), "{shown}");

        let empty = write(&dir, "empty.pem", "");
        let err = load_trust_bundle(&empty).unwrap_err();
        assert!(matches!(err, PemError::NoCertificate { .. }), "{err:?}");
    }

    #[test]
    fn file_without_key_names_path() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, _) = cert_and_key();
        let path = write(&dir, "only-cert.pem", &cert);
        let err = load_private_key(&path).unwrap_err();
        assert!(matches!(err, PemError::NoPrivateKey { .. }), "{err:?}");
        let shown = err.to_string();
        assert!(shown.contains("only-cert.pem"), "{shown}");
        assert!(shown.contains("no private key"), "{shown}");
    }

    #[test]
    fn malformed_pem_is_a_parse_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(
            &dir,
            "bad.pem",
            "-----BEGIN CERTIFICATE-----\n!!!not base64!!!\n-----END CERTIFICATE-----\n",
        );
        let err = load_certs(&path).unwrap_err();
        assert!(matches!(err, PemError::Parse { .. }), "{err:?}");
        let shown = err.to_string();
        assert!(shown.contains("bad.pem"), "{shown}");
        assert!(shown.contains("invalid PEM"), "{shown}");

        let truncated = "-----BEGIN CERTIFICATE-----\nMIIB\n";
        let err = certs_from_pem(truncated.as_bytes(), "trust bundle of cluster west").unwrap_err();
        assert!(matches!(err, PemError::Parse { .. }), "{err:?}");
        assert!(err
            .to_string()
            .starts_with("trust bundle of cluster west: "));
    }

    #[test]
    fn from_bytes_variants() {
        let (cert, key) = cert_and_key();
        assert_eq!(certs_from_pem(cert.as_bytes(), "mem").unwrap().len(), 1);
        assert_eq!(
            trust_bundle_from_pem(cert.as_bytes(), "mem").unwrap().len(),
            1
        );
        private_key_from_pem(key.as_bytes(), "mem").unwrap();
        let err = private_key_from_pem(b"", "inline key").unwrap_err();
        assert_eq!(
            err.to_string().split(':').next(),
            Some("inline key"),
            "{err}"
        );
    }
}
