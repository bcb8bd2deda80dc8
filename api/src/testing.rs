//! The one test PKI (feature `testing`, and this crate's own tests): a federation root, a CA per
//! cluster of trust domain `<cluster>.causeway.mesh` (the layout `causeway certs` writes), and
//! leaves (X.509-SVIDs) with whatever a test needs: several URIs, other key usages, expired, with
//! or without their CA in the chain. For tests only: keys are generated in memory, nothing
//! checks them but the code under test.

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SanType,
};
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::tls::{Identity, TrustBundle};

/// A certificate authority.
pub struct Ca {
    pub issuer: CertifiedIssuer<'static, KeyPair>,
}

fn ca_params(cn: &str, path_len: Option<u8>) -> CertificateParams {
    let mut p = CertificateParams::default();
    p.distinguished_name = rcgen::DistinguishedName::new();
    p.distinguished_name.push(DnType::CommonName, cn);
    p.is_ca = IsCa::Ca(match path_len {
        Some(n) => BasicConstraints::Constrained(n),
        None => BasicConstraints::Unconstrained,
    });
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    p
}

impl Ca {
    /// A self-signed root that may sign one level of CAs.
    pub fn root(cn: &str) -> Self {
        let issuer =
            CertifiedIssuer::self_signed(ca_params(cn, Some(1)), KeyPair::generate().unwrap())
                .unwrap();
        Self { issuer }
    }

    /// A self-signed root from `params` as they are (a test of an unusual root).
    pub fn self_signed(params: CertificateParams) -> Self {
        let issuer = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        Self { issuer }
    }

    /// A CA signed by this one, of no trust domain.
    pub fn intermediate(&self, cn: &str) -> Self {
        self.intermediate_of(cn, None)
    }

    /// A CA signed by this one, of trust domain `td` (URI SAN `spiffe://<td>`) when given, as
    /// `causeway certs` makes a cluster's CA.
    pub fn intermediate_of(&self, cn: &str, td: Option<&str>) -> Self {
        let mut p = ca_params(cn, Some(0));
        p.use_authority_key_identifier_extension = true;
        if let Some(td) = td {
            p.subject_alt_names = vec![SanType::URI(format!("spiffe://{td}").try_into().unwrap())];
        }
        let issuer =
            CertifiedIssuer::signed_by(p, KeyPair::generate().unwrap(), &self.issuer).unwrap();
        Self { issuer }
    }

    pub fn pem(&self) -> String {
        self.issuer.pem()
    }

    pub fn der(&self) -> CertificateDer<'static> {
        self.issuer.der().clone()
    }

    /// A bundle of this CA alone.
    pub fn bundle(&self) -> TrustBundle {
        TrustBundle::new(vec![self.der()])
    }

    /// A leaf X.509-SVID for `spiffe`: (certificate PEM, with this CA appended when `chain`;
    /// key PEM).
    pub fn svid(&self, spiffe: &str, expired: bool, chain: bool) -> (String, String) {
        Leaf {
            expired,
            chain: chain.then_some(self),
            ..Leaf::spiffe(spiffe)
        }
        .issue_pem(self)
    }
}

/// A leaf certificate to issue.
pub struct Leaf<'a> {
    /// URI SANs (a SPIFFE ID is one).
    pub uris: Vec<String>,
    pub ekus: Vec<ExtendedKeyUsagePurpose>,
    /// Valid until yesterday (else from five minutes ago until tomorrow).
    pub expired: bool,
    /// An intermediate to append to the chain.
    pub chain: Option<&'a Ca>,
}

impl<'a> Leaf<'a> {
    /// A leaf for one SPIFFE ID, for servers and clients.
    pub fn spiffe(id: impl ToString) -> Self {
        Self {
            uris: vec![id.to_string()],
            ekus: vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ],
            expired: false,
            chain: None,
        }
    }

    fn sign(self, ca: &Ca) -> (Vec<CertificateDer<'static>>, String, KeyPair) {
        let mut p = CertificateParams::default();
        p.distinguished_name = rcgen::DistinguishedName::new();
        p.is_ca = IsCa::ExplicitNoCa;
        p.subject_alt_names = self
            .uris
            .iter()
            .map(|u| SanType::URI(u.clone().try_into().unwrap()))
            .collect();
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        p.extended_key_usages = self.ekus;
        p.use_authority_key_identifier_extension = true;
        let now = time::OffsetDateTime::now_utc();
        if self.expired {
            p.not_before = now - time::Duration::days(10);
            p.not_after = now - time::Duration::days(1);
        } else {
            p.not_before = now - time::Duration::minutes(5);
            p.not_after = now + time::Duration::days(1);
        }
        let key = KeyPair::generate().unwrap();
        let cert = p.signed_by(&key, &ca.issuer).unwrap();
        let mut pem = cert.pem();
        let mut chain = vec![cert.der().clone()];
        if let Some(via) = self.chain {
            chain.push(via.der());
            pem.push_str(&via.pem());
        }
        (chain, pem, key)
    }

    /// Signs the leaf by `ca`, as an identity to hand to TLS.
    pub fn issue(self, ca: &Ca) -> Identity {
        let (chain, _, key) = self.sign(ca);
        Identity::new(chain, PrivateKeyDer::try_from(key.serialize_der()).unwrap())
    }

    /// Signs the leaf by `ca`: (chain PEM, key PEM), as files hold them.
    pub fn issue_pem(self, ca: &Ca) -> (String, String) {
        let (_, pem, key) = self.sign(ca);
        (pem, key.serialize_pem())
    }
}
