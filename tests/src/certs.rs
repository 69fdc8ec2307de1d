//! Test certificates for mutual TLS: a CA of the test's own and
//! certificates it signs, written as PEM files that the daemons' `--tls-*`
//! flags take (rcgen; nothing leaves the temp directory).

use std::path::{Path, PathBuf};

use rcgen::{BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use tonic::transport::{Certificate, ClientTlsConfig, Identity};

/// A CA whose certificate is `pem`.
pub struct TestCa {
    issuer: Issuer<'static, KeyPair>,
    pub pem: PathBuf,
}

/// One process's files, as its flags take them.
#[derive(Clone, Debug)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub ca: PathBuf,
    /// The name a client built from these files ([`TlsFiles::client`])
    /// checks the server's certificate against, instead of the host it
    /// dials: for a test that reaches daemons at addresses their
    /// certificate does not name (containers on a network of the test's,
    /// at addresses known only once they run).
    pub server_name: Option<String>,
}

impl TlsFiles {
    /// `--tls-cert`, `--tls-key`, `--tls-ca` with these files.
    pub fn flags(&self) -> Vec<String> {
        let p = |p: &Path| p.display().to_string();
        vec!["--tls-cert".into(), p(&self.cert), "--tls-key".into(), p(&self.key), "--tls-ca".into(), p(&self.ca)]
    }

    /// Makes a host agent's command line use these files: appends the
    /// flags and drops the `http://` of its `--coordinator` list, so that
    /// each bare `host:port` is dialed with TLS.
    pub fn apply_to_host(&self, args: &mut Vec<String>) {
        if let Some(at) = args.iter().position(|a| a == "--coordinator") {
            args[at + 1] = args[at + 1].replace("http://", "");
        }
        args.extend(self.flags());
    }

    /// Copies these three files over `to`'s, each written whole and renamed
    /// into place (as a kubelet updates a mounted Secret, or cert-manager's
    /// CSI driver a certificate), in the order certificate, key, CA.
    pub fn copy_to(&self, to: &TlsFiles) {
        for (from, into) in [(&self.cert, &to.cert), (&self.key, &to.key), (&self.ca, &to.ca)] {
            replace_file(into, &std::fs::read(from).unwrap_or_else(|e| panic!("{}: {e}", from.display())));
        }
    }

    /// A tonic client configuration presenting these files.
    pub fn client(&self) -> ClientTlsConfig {
        let read = |p: &Path| std::fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        let config = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(read(&self.ca)))
            .identity(Identity::from_pem(read(&self.cert), read(&self.key)));
        match &self.server_name {
            Some(name) => config.domain_name(name.clone()),
            None => config,
        }
    }
}

/// Writes `body` to `path` whole, by a rename.
pub fn replace_file(path: &Path, body: &[u8]) {
    let tmp = path.with_extension("new");
    std::fs::write(&tmp, body).unwrap_or_else(|e| panic!("{}: {e}", tmp.display()));
    std::fs::rename(&tmp, path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
}

impl TestCa {
    /// The CA's certificate (PEM).
    pub fn pem_text(&self) -> String {
        std::fs::read_to_string(&self.pem).expect("read CA")
    }

    /// A new CA, its certificate written to `dir/{name}-ca.pem`.
    pub fn new(dir: &Path, name: &str) -> TestCa {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(rcgen::DnType::CommonName, format!("{name} test CA"));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::DigitalSignature];
        let key = KeyPair::generate().expect("CA key");
        let cert = params.self_signed(&key).expect("CA certificate");
        let pem = dir.join(format!("{name}-ca.pem"));
        std::fs::write(&pem, cert.pem()).expect("write CA");
        TestCa { issuer: Issuer::new(params, key), pem }
    }

    /// A certificate for `name` valid for loopback (127.0.0.1, localhost),
    /// for both ends of a connection, with its key, trusting this CA.
    pub fn issue(&self, dir: &Path, name: &str) -> TlsFiles {
        self.issue_naming(dir, name, &[])
    }

    /// The same, also valid for the DNS names `more`.
    pub fn issue_naming(&self, dir: &Path, name: &str, more: &[&str]) -> TlsFiles {
        let mut sans = vec!["127.0.0.1", "localhost"];
        sans.extend(more);
        self.issue_only(dir, name, &sans)
    }

    /// A certificate valid for exactly `sans` (DNS names or IP addresses).
    pub fn issue_only(&self, dir: &Path, name: &str, sans: &[&str]) -> TlsFiles {
        self.issue_with(dir, name, sans, None)
    }

    /// [`TestCa::issue`], expiring `valid_for` from now.
    pub fn issue_expiring(&self, dir: &Path, name: &str, valid_for: std::time::Duration) -> TlsFiles {
        self.issue_with(dir, name, &["127.0.0.1", "localhost"], Some(valid_for))
    }

    fn issue_with(&self, dir: &Path, name: &str, sans: &[&str], valid_for: Option<std::time::Duration>) -> TlsFiles {
        let mut params = CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>()).expect("params");
        if let Some(d) = valid_for {
            params.not_before = time::OffsetDateTime::now_utc() - time::Duration::hours(1);
            params.not_after = time::OffsetDateTime::now_utc() + d;
        }
        params.distinguished_name.push(rcgen::DnType::CommonName, name);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        let key = KeyPair::generate().expect("key");
        let cert = params.signed_by(&key, &self.issuer).expect("certificate");
        let files =
            TlsFiles { cert: dir.join(format!("{name}.pem")), key: dir.join(format!("{name}.key")), ca: self.pem.clone(), server_name: None };
        std::fs::write(&files.cert, cert.pem()).expect("write cert");
        std::fs::write(&files.key, key.serialize_pem()).expect("write key");
        files
    }
}
