//! Mutual TLS for every gRPC connection of both daemons: the coordinator's
//! listener and its raft peer clients, the host agent's session client and
//! its ingest listener.
//!
//! One set of three PEM files per process (`--tls-cert`, `--tls-key`,
//! `--tls-ca`): its own certificate chain and key, and the cluster's CA.
//! Both ends of every connection prove themselves against that CA, so a
//! client or peer without a certificate from it is turned away in the
//! handshake, before a single Lockstep message is read. There is no
//! server-only mode on purpose: without client certificates anyone who can
//! reach the port could join as a host or call `Admin/RemoveNode`.
//!
//! The files are read and checked once, at start; a bad file stops the
//! daemon naming it. Rotating a certificate means restarting the process
//! (a rolling restart keeps the pipeline going: hosts reconnect and the
//! coordinator group keeps its leader or elects one).

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::server::WebPkiClientVerifier;
use tokio_rustls::rustls::{RootCertStore, ServerConfig};
use tokio_rustls::server::TlsStream;
use tonic::transport::{Certificate, ClientTlsConfig, Identity};
use tracing::warn;

use crate::runtime::error_chain;

/// Bound on a server-side TLS handshake: a client that connects and then
/// says nothing holds a task and a socket until it passes.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// A refused handshake is logged at most this often per client address and
/// reason (a misconfigured host agent retries every few seconds, for ever).
const REFUSAL_LOG_EVERY: Duration = Duration::from_secs(30);
/// Client addresses remembered for that; beyond it the memory starts over.
const REFUSAL_ADDRS_MAX: usize = 1024;
/// Handshaken connections waiting for the gRPC server to take them.
const ACCEPTED_QUEUED_MAX: usize = 64;

/// (client address, reason) -> (when last logged, refusals not logged since).
type Refusals = HashMap<(IpAddr, String), (Instant, u64)>;

/// The daemons' TLS flags (the same on the coordinator and the host agent).
#[derive(clap::Args, Clone, Debug, Default)]
pub struct TlsArgs {
    /// This process's certificate (PEM; the chain up to, not including, the
    /// CA). With --tls-key and --tls-ca it turns on mutual TLS for every
    /// gRPC connection, served and made; it must name every address others
    /// dial this process at (DNS or IP subject alternative names) and allow
    /// both server and client authentication.
    #[arg(long, env = "LOCKSTEP_TLS_CERT", requires_all = ["tls_key", "tls_ca"])]
    pub tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM: PKCS#8, PKCS#1 or SEC1).
    #[arg(long, env = "LOCKSTEP_TLS_KEY", requires_all = ["tls_cert", "tls_ca"])]
    pub tls_key: Option<PathBuf>,
    /// The cluster's CA certificate(s) (PEM): every peer, host agent and
    /// Admin client must present a certificate it signed, and every server
    /// this process dials must too.
    #[arg(long, env = "LOCKSTEP_TLS_CA", requires_all = ["tls_cert", "tls_key"])]
    pub tls_ca: Option<PathBuf>,
}

impl TlsArgs {
    /// The loaded material, or `None` when the flags are not given (clap
    /// makes sure it is all three or none).
    pub fn load(&self) -> Result<Option<Tls>, TlsError> {
        match (&self.tls_cert, &self.tls_key, &self.tls_ca) {
            (Some(cert), Some(key), Some(ca)) => Tls::load(cert, key, ca).map(Some),
            (None, None, None) => Ok(None),
            _ => Err(TlsError::Incomplete),
        }
    }
}

/// What can be wrong with the TLS files; each names the file and what to do.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("--tls-cert, --tls-key and --tls-ca go together: give all three for mutual TLS, or none for plaintext")]
    Incomplete,
    #[error("cannot read the TLS {what} {}: {source}", path.display())]
    Read { what: &'static str, path: PathBuf, source: std::io::Error },
    #[error(
        "the TLS {what} {} holds no PEM {label}; give a PEM file (a DER file converts with `openssl {convert} -inform der -in FILE -out FILE.pem`)",
        path.display()
    )]
    NotPem { what: &'static str, path: PathBuf, label: &'static str, convert: &'static str },
    #[error("the TLS {what} {} cannot be read as PEM: {reason}", path.display())]
    BadPem { what: &'static str, path: PathBuf, reason: String },
    #[error("the TLS CA {}: {reason}", path.display())]
    Ca { path: PathBuf, reason: String },
    #[error("the TLS certificate {} and key {} cannot serve connections: {reason}", cert.display(), key.display())]
    Server { cert: PathBuf, key: PathBuf, reason: String },
    #[error(
        "the TLS certificate {}, key {} and CA {} cannot dial connections: {reason}",
        cert.display(), key.display(), ca.display()
    )]
    Client { cert: PathBuf, key: PathBuf, ca: PathBuf, reason: String },
}

/// A process's loaded TLS material: checked once, cheap to clone.
#[derive(Clone, Debug)]
pub struct Tls {
    /// For connections this process dials (tonic's client TLS).
    identity: Identity,
    ca: Certificate,
    /// For connections it accepts: built here rather than by tonic so that
    /// a refused handshake is logged with the client's address (tonic logs
    /// it at debug, without one).
    server: Arc<ServerConfig>,
    cert_path: PathBuf,
    ca_path: PathBuf,
}

impl Tls {
    /// Reads the three files and builds both the server and the client
    /// configuration, so that a wrong file fails here, at start, naming it,
    /// rather than at the first connection.
    pub fn load(cert: &Path, key: &Path, ca: &Path) -> Result<Tls, TlsError> {
        let cert_pem = read("certificate", cert)?;
        let key_pem = read("key", key)?;
        let ca_pem = read("CA", ca)?;
        let chain = certificates("certificate", cert, &cert_pem)?;
        let ca_certs = certificates("CA", ca, &ca_pem)?;
        let private_key = match PrivateKeyDer::from_pem_slice(&key_pem) {
            Ok(k) => k,
            Err(tokio_rustls::rustls::pki_types::pem::Error::NoItemsFound) => {
                return Err(TlsError::NotPem { what: "key", path: key.into(), label: "private key", convert: "pkey" })
            }
            Err(e) => return Err(TlsError::BadPem { what: "key", path: key.into(), reason: e.to_string() }),
        };
        let mut roots = RootCertStore::empty();
        for c in ca_certs {
            roots.add(c).map_err(|e| TlsError::Ca { path: ca.into(), reason: format!("not a usable CA certificate: {e}") })?;
        }
        // ring, on purpose (STACK: aws-lc-rs is a slow C build here), as
        // tonic's `tls-ring` does; rustls deprecates it only to point at
        // aws-lc-rs's post-quantum key exchange.
        #[allow(deprecated)]
        let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
        let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
            .build()
            .map_err(|e| TlsError::Ca { path: ca.into(), reason: e.to_string() })?;
        let server_err = |e: &dyn std::error::Error| TlsError::Server { cert: cert.into(), key: key.into(), reason: error_chain(e) };
        let mut server = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| server_err(&e))?
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain, private_key)
            .map_err(|e| server_err(&e))?;
        server.alpn_protocols = vec![b"h2".to_vec()];
        let tls = Tls {
            identity: Identity::from_pem(cert_pem, key_pem),
            ca: Certificate::from_pem(ca_pem),
            server: Arc::new(server),
            cert_path: cert.to_path_buf(),
            ca_path: ca.to_path_buf(),
        };
        tonic::transport::Endpoint::from_static("https://lockstep.invalid")
            .tls_config(tls.client())
            .map_err(|e| TlsError::Client { cert: cert.into(), key: key.into(), ca: ca.into(), reason: error_chain(&e) })?;
        Ok(tls)
    }

    /// For a connection this process dials: trust only the CA, and present
    /// this identity. The server's name is checked against the host in the
    /// URL.
    pub fn client(&self) -> ClientTlsConfig {
        ClientTlsConfig::new().ca_certificate(self.ca.clone()).identity(self.identity.clone())
    }

    /// Accepts connections on `listener` and completes their handshakes
    /// (each in its own task, bounded by [`HANDSHAKE_TIMEOUT`]), requiring a
    /// client certificate the CA signed; a tonic server takes the stream
    /// with `serve_with_incoming*`. A refused handshake is logged as a
    /// warning naming the client's address and `what` (the listener), at
    /// most every [`REFUSAL_LOG_EVERY`] per address and reason, and counted
    /// (`lockstep_tls_handshakes_refused_total`). The stream ends when it is
    /// dropped. Must be called inside a tokio runtime.
    pub fn accept(
        &self,
        listener: TcpListener,
        what: &'static str,
    ) -> tokio_stream::wrappers::ReceiverStream<Result<TlsStream<TcpStream>, std::io::Error>> {
        let (tx, rx) = tokio::sync::mpsc::channel(ACCEPTED_QUEUED_MAX);
        let acceptor = tokio_rustls::TlsAcceptor::from(self.server.clone());
        let refusals: Arc<Mutex<Refusals>> = Arc::default();
        let ca = self.ca_path.clone();
        tokio::spawn(async move {
            loop {
                let accepted = tokio::select! {
                    _ = tx.closed() => return,
                    a = listener.accept() => a,
                };
                let (tcp, peer) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // Out of descriptors or a connection reset before it
                        // was taken: the listener itself is fine.
                        warn!(listener = what, "accepting a connection failed: {e}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = tcp.set_nodelay(true);
                let (acceptor, tx, refusals, ca) = (acceptor.clone(), tx.clone(), refusals.clone(), ca.clone());
                tokio::spawn(async move {
                    let why = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                        Ok(Ok(stream)) => {
                            let _ = tx.send(Ok(stream)).await;
                            return;
                        }
                        Ok(Err(e)) => {
                            let e = e.to_string();
                            // What the usual mistakes look like from here.
                            let hint = if e.contains("InvalidContentType") {
                                " (a plaintext client?)"
                            } else if e.contains("alert: UnknownCA") || e.contains("alert: BadCertificate") {
                                " (the client does not trust this server's certificate: is its CA file this cluster's?)"
                            } else {
                                ""
                            };
                            format!("{e}{hint}")
                        }
                        Err(_) => format!("no handshake within {HANDSHAKE_TIMEOUT:?}"),
                    };
                    metrics::counter!("lockstep_tls_handshakes_refused_total", "listener" => what).increment(1);
                    let suppressed = {
                        let mut seen = refusals.lock().unwrap_or_else(|p| p.into_inner());
                        if seen.len() >= REFUSAL_ADDRS_MAX {
                            seen.clear();
                        }
                        let now = Instant::now();
                        match seen.get_mut(&(peer.ip(), why.clone())) {
                            Some((last, skipped)) if now.duration_since(*last) < REFUSAL_LOG_EVERY => {
                                *skipped += 1;
                                return;
                            }
                            Some(entry) => std::mem::replace(entry, (now, 0)).1,
                            None => {
                                seen.insert((peer.ip(), why.clone()), (now, 0));
                                0
                            }
                        }
                    };
                    let more = if suppressed > 0 { format!(" ({suppressed} more from this address since the last warning)") } else { String::new() };
                    warn!(
                        listener = what, client = %peer,
                        "refused a TLS connection from {peer}: {why}{more}. Every client must dial with TLS and present a \
                         certificate signed by the CA in {}",
                        ca.display()
                    );
                });
            }
        });
        tokio_stream::wrappers::ReceiverStream::new(rx)
    }

    /// For logs: which files are in use.
    pub fn describe(&self) -> String {
        format!("certificate {}, CA {}", self.cert_path.display(), self.ca_path.display())
    }
}

/// Serves `router` on `listener` until `signal`: through [`Tls::accept`]
/// with `tls` (`what` names the listener in its warnings), else plaintext;
/// Nagle off either way (commands, reports and pushes are small and wait on
/// their answers). The one place both daemons' listeners are served from.
pub async fn serve(
    router: tonic::transport::server::Router,
    listener: TcpListener,
    tls: Option<Tls>,
    what: &'static str,
    signal: impl std::future::Future<Output = ()>,
) -> Result<(), tonic::transport::Error> {
    match tls {
        Some(tls) => router.serve_with_incoming_shutdown(tls.accept(listener, what), signal).await,
        None => {
            let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
            router.serve_with_incoming_shutdown(incoming, signal).await
        }
    }
}

/// The URL scheme of connections made with (`https`) or without (`http`)
/// TLS.
pub fn scheme(tls: bool) -> &'static str {
    if tls {
        "https"
    } else {
        "http"
    }
}

/// `Ok` if the first (leaf) certificate of `chain` is valid for the DNS
/// name `name`, by the rules a TLS client checks a server's name with
/// (subject alternative names, wildcards included); otherwise why not, as
/// "(it names only …)" or the parse error. `who` opens the message.
pub fn check_name(who: &str, name: &str, chain: Option<&[CertificateDer<'_>]>) -> Result<(), String> {
    check_any_name(who, std::iter::once(name), chain)
}

/// [`check_name`] for several names: `Ok` if the leaf is valid for any of
/// them (parsed once, however many names are tried); the message names the
/// last one tried.
pub fn check_any_name<'n>(
    who: &str,
    names: impl IntoIterator<Item = &'n str>,
    chain: Option<&[CertificateDer<'_>]>,
) -> Result<(), String> {
    let mut names = names.into_iter().peekable();
    let Some(leaf) = chain.and_then(|c| c.first()) else {
        let name = names.peek().copied().unwrap_or("");
        return Err(format!("{who} presented no client certificate, but it must be valid for {name}"));
    };
    let cert = webpki::EndEntityCert::try_from(leaf).map_err(|e| format!("{who}'s certificate cannot be parsed: {e}"))?;
    let mut why = format!("{who}'s certificate was checked against no name");
    for name in names {
        let server_name = match tokio_rustls::rustls::pki_types::ServerName::try_from(name) {
            Ok(n) => n,
            Err(e) => {
                why = format!("{name:?} is not a DNS name ({e})");
                continue;
            }
        };
        match cert.verify_is_valid_for_subject_name(&server_name) {
            Ok(()) => return Ok(()),
            Err(webpki::Error::CertNotValidForName(_)) => {
                let presented: Vec<&str> = cert.valid_dns_names().collect();
                why = format!("{who}'s certificate is not valid for {name} (it names only {})", presented.join(", "));
            }
            Err(other) => why = format!("{who}'s certificate is not valid for {name} ({other:?})"),
        }
    }
    Err(why)
}

/// `--tls-admin-name`: the DNS name a client certificate must be valid for
/// to change the cluster through Admin (checked as [`check_name`] does).
#[derive(Clone, Debug)]
pub struct AdminName(pub String);

impl std::str::FromStr for AdminName {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        tokio_rustls::rustls::pki_types::ServerName::try_from(s)
            .map_err(|e| format!("{s:?} is not a DNS name ({e}); give the name the operators' certificates carry, e.g. admin.lockstep"))?;
        Ok(AdminName(s.to_string()))
    }
}

/// `--tls-host-name`: the DNS name a host agent's client certificate must
/// be valid for, given its host id (`{host}` in the template stands for
/// it). Without it, any certificate the CA signed may claim any host id.
#[derive(Clone, Debug)]
pub struct HostNames {
    template: String,
}

impl std::str::FromStr for HostNames {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if !s.contains("{host}") {
            return Err(format!("{s:?} does not contain {{host}}; give e.g. {{host}}.hosts.example.com or {{host}}"));
        }
        Ok(HostNames { template: s.to_string() })
    }
}

impl HostNames {
    /// The name `host`'s certificate must be valid for.
    pub fn name_of(&self, host: &str) -> String {
        self.template.replace("{host}", host)
    }

    /// `Ok` if the first (leaf) certificate of `chain` is valid for
    /// `host`'s name, by the rules a TLS client checks a server's name with
    /// (subject alternative names, wildcards included: a wildcard
    /// certificate passes for every host, which is the operator's choice);
    /// otherwise why not, for the host agent and the log.
    pub fn check(&self, host: &str, chain: Option<&[CertificateDer<'_>]>) -> Result<(), String> {
        check_name(&format!("host agent {host}"), &self.name_of(host), chain).map_err(|why| {
            format!(
                "{why}: another host's certificate, or one issued without that name; --tls-host-name requires each \
                 host's certificate to name its own host"
            )
        })
    }
}

fn read(what: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read { what, path: path.into(), source })
}

fn certificates(what: &'static str, path: &Path, pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::BadPem { what, path: path.into(), reason: e.to_string() })?;
    if certs.is_empty() {
        return Err(TlsError::NotPem { what, path: path.into(), label: "certificate", convert: "x509" });
    }
    Ok(certs)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// PEM blocks whose base64 decodes to no certificate or key.
    const EMPTY_CERT: &str = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
    const EMPTY_KEY: &str = "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n";

    fn write(dir: &Path, name: &str, body: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, body).unwrap();
        p
    }

    #[test]
    fn a_missing_file_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let e = Tls::load(&dir.path().join("node.pem"), &dir.path().join("node.key"), &dir.path().join("ca.pem")).unwrap_err();
        let shown = e.to_string();
        assert!(shown.starts_with("cannot read the TLS certificate ") && shown.contains("node.pem"), "{shown}");
    }

    #[test]
    fn a_file_that_is_not_pem_is_named_with_the_conversion() {
        let dir = tempfile::tempdir().unwrap();
        let cert = write(dir.path(), "node.der", "\u{30}\u{82}binary");
        let (key, ca) = (write(dir.path(), "node.key", EMPTY_KEY), write(dir.path(), "ca.pem", EMPTY_CERT));
        let shown = Tls::load(&cert, &key, &ca).unwrap_err().to_string();
        assert!(shown.contains("node.der holds no PEM certificate"), "{shown}");
        assert!(shown.contains("openssl x509 -inform der"), "{shown}");
        let shown = Tls::load(&ca, &cert, &ca).unwrap_err().to_string();
        assert!(shown.contains("node.der holds no PEM private key") && shown.contains("openssl pkey"), "{shown}");
    }

    #[test]
    fn pem_blocks_that_do_not_parse_fail_at_load_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = (write(dir.path(), "node.pem", EMPTY_CERT), write(dir.path(), "node.key", EMPTY_KEY));
        let ca = write(dir.path(), "ca.pem", &EMPTY_CERT.replace("AAAA", "AA!A"));
        let shown = Tls::load(&cert, &key, &ca).unwrap_err().to_string();
        assert!(shown.contains("ca.pem"), "{shown}");
        // Base64 that decodes to no certificate: the CA store refuses it.
        let shown = Tls::load(&cert, &key, &cert).unwrap_err().to_string();
        assert!(shown.starts_with("the TLS CA ") && shown.contains("node.pem"), "{shown}");
    }

    #[test]
    fn a_host_name_template_needs_the_placeholder_and_names_the_host() {
        assert!("hosts.example.com".parse::<HostNames>().unwrap_err().contains("{host}"));
        let names: HostNames = "{host}.hosts.example.com".parse().unwrap();
        assert_eq!(names.name_of("host-3"), "host-3.hosts.example.com");
        let e = names.check("host-3", None).unwrap_err();
        assert!(e.contains("presented no client certificate") && e.contains("host-3.hosts.example.com"), "{e}");
        let e = names.check("host-3", Some(&[CertificateDer::from(vec![1u8, 2, 3])])).unwrap_err();
        assert!(e.contains("cannot be parsed"), "{e}");
    }

    #[test]
    fn the_flags_are_all_three_or_none() {
        assert!(TlsArgs::default().load().unwrap().is_none());
        let half = TlsArgs { tls_cert: Some("a".into()), ..Default::default() };
        assert!(matches!(half.load(), Err(TlsError::Incomplete)));
    }
}
