//! Certificates made by the tests: a private CA and what it signs (server
//! certificates for 127.0.0.1 and localhost, client certificates), as PEM
//! files the real servers and clients read.

use std::path::{Path, PathBuf};

/// A CA made here.
pub struct TestCa {
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
    /// The CA's certificate, PEM.
    pub pem: String,
}

/// A certificate and key the CA signed, as files.
#[derive(Debug, Clone)]
pub struct Issued {
    /// The certificate (PEM).
    pub cert: PathBuf,
    /// Its private key (PEM, PKCS#8).
    pub key: PathBuf,
    /// The certificate, DER (what a TLS client sees of the server).
    pub der: Vec<u8>,
}

impl TestCa {
    /// A new CA named `name`.
    pub fn new(name: &str) -> Self {
        let key = rcgen::KeyPair::generate().expect("ca key");
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("ca params");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        let cert = params.self_signed(&key).expect("ca");
        Self {
            pem: cert.pem(),
            issuer: rcgen::Issuer::new(params, key),
        }
    }

    /// Writes the CA's certificate to `path`; returns `path`.
    pub fn write(&self, path: &Path) -> PathBuf {
        std::fs::write(path, &self.pem).expect("ca file");
        path.to_owned()
    }

    /// A certificate for `names` (DNS names or IP addresses; empty for a
    /// client certificate), usable by servers and clients, written to
    /// `cert` and `key`.
    pub fn issue_to(&self, names: &[&str], cert: &Path, key: &Path) -> Issued {
        let pair = rcgen::KeyPair::generate().expect("key");
        let mut params = rcgen::CertificateParams::new(
            names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>(),
        )
        .expect("params");
        params.distinguished_name.push(
            rcgen::DnType::CommonName,
            names.first().copied().unwrap_or("client"),
        );
        params.extended_key_usages = vec![
            rcgen::ExtendedKeyUsagePurpose::ServerAuth,
            rcgen::ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let signed = params.signed_by(&pair, &self.issuer).expect("sign");
        std::fs::write(cert, signed.pem()).expect("cert file");
        std::fs::write(key, pair.serialize_pem()).expect("key file");
        Issued {
            cert: cert.to_owned(),
            key: key.to_owned(),
            der: signed.der().to_vec(),
        }
    }

    /// [`TestCa::issue_to`] `dir/<stem>.pem` and `dir/<stem>.key`.
    pub fn issue(&self, names: &[&str], dir: &Path, stem: &str) -> Issued {
        self.issue_to(
            names,
            &dir.join(format!("{stem}.pem")),
            &dir.join(format!("{stem}.key")),
        )
    }
}
