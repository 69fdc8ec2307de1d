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
//! The files are read and checked at start; a bad file stops the daemon
//! naming it. After that they are read again every `--tls-reload-ms`
//! (certificates are renewed in place by cert-manager, a CSI driver or a
//! kubelet updating a Secret's volume), and a changed set that checks out
//! is used for every connection made or accepted from then on; connections
//! already open keep the certificates they were made with. A changed set
//! that does not check out (a key that no longer fits its certificate
//! while a renewal is half written, say) is logged and ignored: the daemon
//! keeps serving with what it had. The certificate's and the CA's expiry
//! are exported as metrics and warned about in the last week.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::server::WebPkiClientVerifier;
use tokio_rustls::rustls::{RootCertStore, ServerConfig};
use tokio_rustls::server::TlsStream;
use tonic::transport::{Certificate, ClientTlsConfig, Identity};
use tracing::{info, warn};

use crate::runtime::error_chain;

/// Bound on a server-side TLS handshake: a client that connects and then
/// says nothing holds a task and a socket until it passes.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Handshakes in progress at once per listener; beyond it connections wait
/// in the kernel's accept queue, so a flood of clients that never finish a
/// handshake costs bounded memory and tasks.
const HANDSHAKES_MAX: usize = 256;
/// A refused handshake is logged at most this often per client address and
/// reason (a misconfigured host agent retries every few seconds, for ever).
const REFUSAL_LOG_EVERY: Duration = Duration::from_secs(30);
/// Client addresses remembered for that; beyond it the memory starts over.
const REFUSAL_ADDRS_MAX: usize = 1024;
/// Handshaken connections waiting for the gRPC server to take them.
const ACCEPTED_QUEUED_MAX: usize = 64;
/// A failing `accept` (out of file descriptors, typically) is logged at most
/// this often; it repeats as fast as the loop retries.
const ACCEPT_ERROR_LOG_EVERY: Duration = Duration::from_secs(10);
/// From how long before a certificate's (or the CA's) expiry it is warned
/// about, and how often while that lasts.
const EXPIRY_WARN_WITHIN: Duration = Duration::from_secs(7 * 24 * 3600);
const EXPIRY_WARN_EVERY: Duration = Duration::from_secs(6 * 3600);

/// (client address, reason) -> (when last logged, refusals not logged since).
type Refusals = HashMap<(IpAddr, String), (Instant, u64)>;

/// The daemons' TLS flags (the same on the coordinator and the host agent).
#[derive(clap::Args, Clone, Debug)]
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
    /// this process dials must too. During a CA rotation it holds both CAs.
    #[arg(long, env = "LOCKSTEP_TLS_CA", requires_all = ["tls_cert", "tls_key"])]
    pub tls_ca: Option<PathBuf>,
    /// How often the three TLS files are read again, in milliseconds; a
    /// changed set that checks out is used for new connections from then
    /// on, so renewed certificates need no restart. 0: read only at start.
    #[arg(long, env = "LOCKSTEP_TLS_RELOAD_MS", default_value_t = 10_000)]
    pub tls_reload_ms: u64,
}

impl Default for TlsArgs {
    fn default() -> Self {
        TlsArgs { tls_cert: None, tls_key: None, tls_ca: None, tls_reload_ms: 10_000 }
    }
}

impl TlsArgs {
    /// The loaded material, or `None` when the flags are not given (clap
    /// makes sure it is all three or none). With `--tls-reload-ms` above
    /// zero the files are watched from here on (see [`Tls::watch`]).
    pub fn load(&self) -> Result<Option<Tls>, TlsError> {
        match (&self.tls_cert, &self.tls_key, &self.tls_ca) {
            (Some(cert), Some(key), Some(ca)) => {
                let tls = Tls::load(cert, key, ca)?;
                if self.tls_reload_ms > 0 {
                    tls.watch(Duration::from_millis(self.tls_reload_ms));
                }
                Ok(Some(tls))
            }
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

/// Where a process's three TLS files are.
#[derive(Clone, Debug)]
struct Files {
    cert: PathBuf,
    key: PathBuf,
    ca: PathBuf,
}

/// The three files' contents, as read in one go.
#[derive(PartialEq, Eq)]
struct Contents {
    cert: Vec<u8>,
    key: Vec<u8>,
    ca: Vec<u8>,
}

impl Files {
    fn read(&self) -> Result<Contents, TlsError> {
        Ok(Contents { cert: read("certificate", &self.cert)?, key: read("key", &self.key)?, ca: read("CA", &self.ca)? })
    }
}

/// One checked reading of the files: everything a connection needs.
struct Material {
    /// For connections this process dials (tonic's client TLS).
    identity: Identity,
    ca: Certificate,
    /// For connections it accepts: built here rather than by tonic so that
    /// a refused handshake is logged with the client's address (tonic logs
    /// it at debug, without one).
    server: Arc<ServerConfig>,
    /// What it was built from, to tell whether the files changed since.
    contents: Contents,
    /// The leaf certificate's and the earliest CA certificate's end of
    /// validity (seconds since the Unix epoch), when they can be parsed.
    cert_expires: Option<i64>,
    ca_expires: Option<i64>,
    /// 1 for the files read at start, one more per reload.
    generation: u64,
}

/// A process's TLS material: checked at start, re-read by [`Tls::watch`],
/// cheap to clone (every clone sees the newest material).
#[derive(Clone)]
pub struct Tls {
    shared: Arc<Shared>,
}

struct Shared {
    files: Files,
    current: RwLock<Arc<Material>>,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls").field("files", &self.shared.files).field("generation", &self.generation()).finish()
    }
}

impl Tls {
    /// Reads the three files and builds both the server and the client
    /// configuration, so that a wrong file fails here, at start, naming it,
    /// rather than at the first connection.
    pub fn load(cert: &Path, key: &Path, ca: &Path) -> Result<Tls, TlsError> {
        let files = Files { cert: cert.into(), key: key.into(), ca: ca.into() };
        let material = Material::build(&files, files.read()?, 1)?;
        material.export();
        Ok(Tls { shared: Arc::new(Shared { files, current: RwLock::new(Arc::new(material)) }) })
    }

    fn current(&self) -> Arc<Material> {
        self.shared.current.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Which reading of the files is in use: 1 at start, one more for each
    /// change taken. Whoever keeps connections open across calls (the raft
    /// peer channels) dials anew when it moves.
    pub fn generation(&self) -> u64 {
        self.current().generation
    }

    /// For a connection this process dials: trust only the CA, and present
    /// this identity (the newest the files gave). The server's name is
    /// checked against the host in the URL.
    pub fn client(&self) -> ClientTlsConfig {
        self.current().client()
    }

    /// Re-reads the files every `every` on a thread of its own, for as long
    /// as a clone of this `Tls` lives; see the module's comment. Also warns,
    /// every [`EXPIRY_WARN_EVERY`], about a certificate that expires within
    /// [`EXPIRY_WARN_WITHIN`] or has expired.
    pub fn watch(&self, every: Duration) {
        let shared: Weak<Shared> = Arc::downgrade(&self.shared);
        let mut watcher = Watcher::default();
        // The first poll at once: it finds the files as read, and warns now
        // rather than `every` from now if the certificate is about to expire.
        if let Err(e) = std::thread::Builder::new().name("tls-reload".into()).spawn(move || loop {
            match shared.upgrade() {
                Some(shared) => watcher.poll(&Tls { shared }, every),
                None => return,
            }
            std::thread::sleep(every);
        }) {
            warn!("cannot start the thread that re-reads the TLS files ({e}): they are read only at start");
        }
    }

    /// Accepts connections on `listener` and completes their handshakes
    /// (each in its own task, bounded by [`HANDSHAKE_TIMEOUT`], at most
    /// [`HANDSHAKES_MAX`] at once), requiring a client certificate the CA
    /// signed; a tonic server takes the stream with `serve_with_incoming*`.
    /// Each connection gets the newest material. A refused handshake is
    /// logged as a warning naming the client's address and `what` (the
    /// listener), at most every [`REFUSAL_LOG_EVERY`] per address and
    /// reason, and counted (`lockstep_tls_handshakes_refused_total`). The
    /// stream ends when it is dropped. Must be called inside a tokio runtime.
    pub fn accept(
        &self,
        listener: TcpListener,
        what: &'static str,
    ) -> tokio_stream::wrappers::ReceiverStream<Result<TlsStream<TcpStream>, std::io::Error>> {
        let (tx, rx) = tokio::sync::mpsc::channel(ACCEPTED_QUEUED_MAX);
        let refusals: Arc<Mutex<Refusals>> = Arc::default();
        let handshakes = Arc::new(tokio::sync::Semaphore::new(HANDSHAKES_MAX));
        let tls = self.clone();
        tokio::spawn(async move {
            let mut accept_errors = RateLimit::default();
            loop {
                let permit = tokio::select! {
                    _ = tx.closed() => return,
                    p = handshakes.clone().acquire_owned() => match p {
                        Ok(p) => p,
                        Err(_) => return,
                    },
                };
                let accepted = tokio::select! {
                    _ = tx.closed() => return,
                    a = listener.accept() => a,
                };
                let (tcp, peer) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // Out of descriptors or a connection reset before it
                        // was taken: the listener itself is fine.
                        if let Some(more) = accept_errors.allow(ACCEPT_ERROR_LOG_EVERY) {
                            warn!(listener = what, "accepting a connection failed: {e}{more}");
                        }
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = tcp.set_nodelay(true);
                let (tx, refusals) = (tx.clone(), refusals.clone());
                let material = tls.current();
                let acceptor = tokio_rustls::TlsAcceptor::from(material.server.clone());
                let ca = tls.shared.files.ca.clone();
                tokio::spawn(async move {
                    let handshake = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await;
                    drop(permit);
                    let why = match handshake {
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

    /// For logs: which files are in use, and until when the certificate is
    /// valid.
    pub fn describe(&self) -> String {
        let files = &self.shared.files;
        let until = match self.current().cert_expires {
            Some(t) => format!(", valid until {}", utc(t)),
            None => String::new(),
        };
        format!("certificate {}{until}, CA {}", files.cert.display(), files.ca.display())
    }
}

impl Material {
    fn build(files: &Files, contents: Contents, generation: u64) -> Result<Material, TlsError> {
        let Files { cert, key, ca } = files;
        let chain = certificates("certificate", cert, &contents.cert)?;
        let ca_certs = certificates("CA", ca, &contents.ca)?;
        let private_key = match PrivateKeyDer::from_pem_slice(&contents.key) {
            Ok(k) => k,
            Err(tokio_rustls::rustls::pki_types::pem::Error::NoItemsFound) => {
                return Err(TlsError::NotPem { what: "key", path: key.clone(), label: "private key", convert: "pkey" })
            }
            Err(e) => return Err(TlsError::BadPem { what: "key", path: key.clone(), reason: e.to_string() }),
        };
        let cert_expires = not_after(&chain[0]);
        let ca_expires = ca_certs.iter().filter_map(not_after).min();
        let mut roots = RootCertStore::empty();
        for c in ca_certs {
            roots.add(c).map_err(|e| TlsError::Ca { path: ca.clone(), reason: format!("not a usable CA certificate: {e}") })?;
        }
        // ring, on purpose (STACK: aws-lc-rs is a slow C build here), as
        // tonic's `tls-ring` does; rustls deprecates it only to point at
        // aws-lc-rs's post-quantum key exchange.
        #[allow(deprecated)]
        let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
        let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
            .build()
            .map_err(|e| TlsError::Ca { path: ca.clone(), reason: e.to_string() })?;
        let server_err = |e: &dyn std::error::Error| TlsError::Server { cert: cert.clone(), key: key.clone(), reason: error_chain(e) };
        let mut server = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| server_err(&e))?
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain, private_key)
            .map_err(|e| server_err(&e))?;
        server.alpn_protocols = vec![b"h2".to_vec()];
        let material = Material {
            identity: Identity::from_pem(&contents.cert, &contents.key),
            ca: Certificate::from_pem(&contents.ca),
            server: Arc::new(server),
            contents,
            cert_expires,
            ca_expires,
            generation,
        };
        tonic::transport::Endpoint::from_static("https://lockstep.invalid")
            .tls_config(material.client())
            .map_err(|e| TlsError::Client { cert: cert.clone(), key: key.clone(), ca: ca.clone(), reason: error_chain(&e) })?;
        Ok(material)
    }

    /// Tonic's client configuration: trust the CA, present the identity.
    fn client(&self) -> ClientTlsConfig {
        ClientTlsConfig::new().ca_certificate(self.ca.clone()).identity(self.identity.clone())
    }

    /// The expiry gauges (`lockstep_tls_not_after_seconds{file}`), for
    /// alerting ahead of the daemon's own warnings.
    fn export(&self) {
        for (file, t) in [("certificate", self.cert_expires), ("ca", self.ca_expires)] {
            if let Some(t) = t {
                metrics::gauge!("lockstep_tls_not_after_seconds", "file" => file).set(t as f64);
            }
        }
    }
}

/// The state of [`Tls::watch`]'s thread between polls.
#[derive(Default)]
struct Watcher {
    /// Why the files' current contents were not taken, as last seen: a
    /// renewal written file by file fails once in passing, so a failure is
    /// warned about only when the next poll finds it unchanged.
    failing: Option<String>,
    warned: bool,
    /// When each file's expiry was last warned about.
    expiry_warned: HashMap<&'static str, Instant>,
}

impl Watcher {
    fn poll(&mut self, tls: &Tls, every: Duration) {
        let files = &tls.shared.files;
        let current = tls.current();
        let outcome = files.read().and_then(|contents| {
            if contents == current.contents {
                Ok(None)
            } else {
                Material::build(files, contents, current.generation + 1).map(Some)
            }
        });
        match outcome {
            Ok(None) => self.failing = None,
            Ok(Some(material)) => {
                self.failing = None;
                let material = Arc::new(material);
                material.export();
                *tls.shared.current.write().unwrap_or_else(|p| p.into_inner()) = material.clone();
                metrics::counter!("lockstep_tls_reloads_total", "result" => "taken").increment(1);
                info!(
                    generation = material.generation,
                    "TLS files changed and check out; new connections use them from now on ({}; connections \
                     already open keep theirs)",
                    tls.describe()
                );
                self.expiry_warned.clear();
            }
            Err(e) => {
                let why = e.to_string();
                if self.failing.as_deref() != Some(why.as_str()) {
                    self.failing = Some(why);
                    self.warned = false;
                } else if !self.warned {
                    self.warned = true;
                    metrics::counter!("lockstep_tls_reloads_total", "result" => "refused").increment(1);
                    warn!(
                        "the TLS files changed but cannot be used: {why}. Still using those read {}; they are read \
                         again every {every:?}",
                        match current.generation {
                            1 => "at start".to_string(),
                            g => format!("at reload {}", g - 1),
                        }
                    );
                }
            }
        }
        let now = now_unix();
        let current = tls.current();
        for (file, path, expires) in
            [("certificate", &files.cert, current.cert_expires), ("CA", &files.ca, current.ca_expires)]
        {
            let Some(expires) = expires else { continue };
            if expires - now > EXPIRY_WARN_WITHIN.as_secs() as i64 {
                continue;
            }
            if self.expiry_warned.get(file).is_some_and(|t| t.elapsed() < EXPIRY_WARN_EVERY) {
                continue;
            }
            self.expiry_warned.insert(file, Instant::now());
            if expires <= now {
                warn!(
                    "the TLS {file} {} expired at {}: connections to and from this process will fail. Write a renewed \
                     one in its place; it is read again within {every:?}",
                    path.display(),
                    utc(expires)
                );
            } else {
                warn!(
                    "the TLS {file} {} expires at {} ({} hours from now): write a renewed one in its place before then; \
                     it is read again within {every:?}",
                    path.display(),
                    utc(expires),
                    (expires - now) / 3600
                );
            }
        }
    }
}

/// Counts events and says when one may be logged: at most once per
/// interval, with how many were not.
#[derive(Debug, Default)]
pub struct RateLimit {
    last: Option<Instant>,
    skipped: u64,
}

impl RateLimit {
    /// `Some(suffix)` if this event may be logged (the suffix tells how many
    /// were not since the last), else `None`.
    pub fn allow(&mut self, every: Duration) -> Option<String> {
        if self.last.is_some_and(|t| t.elapsed() < every) {
            self.skipped += 1;
            return None;
        }
        self.last = Some(Instant::now());
        let more = if self.skipped > 0 { format!(" ({} more since the last warning)", self.skipped) } else { String::new() };
        self.skipped = 0;
        Some(more)
    }
}

/// A certificate's end of validity, in seconds since the Unix epoch.
fn not_after(der: &CertificateDer<'_>) -> Option<i64> {
    use x509_parser::prelude::FromDer;
    let (_, cert) = x509_parser::certificate::X509Certificate::from_der(der.as_ref()).ok()?;
    Some(cert.validity().not_after.timestamp())
}

fn now_unix() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0)
}

/// Seconds since the Unix epoch as a UTC time, for messages.
fn utc(t: i64) -> String {
    match x509_parser::time::ASN1Time::from_timestamp(t) {
        Ok(a) => a.to_string(),
        Err(_) => format!("{t} (Unix time)"),
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

/// What a failed call's transport error says beyond tonic's "transport
/// error" (the TLS alert of a server that refused this process's
/// certificate, say), as ": …", with a hint when it is that; empty when
/// there is nothing more.
pub fn transport_detail(status: &tonic::Status) -> String {
    let Some(source) = std::error::Error::source(status) else { return String::new() };
    let chain = error_chain(source);
    let chain = chain.strip_prefix("transport error: ").unwrap_or(&chain);
    if status.message().contains(chain) {
        return String::new();
    }
    let hint = if chain.contains("received fatal alert") {
        " (the server refused this process's TLS certificate: it must be signed by a CA in the server's --tls-ca and \
         allow client authentication; the server's log says why)"
    } else {
        ""
    };
    format!(": {chain}{hint}")
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

    /// A CA's certificate and two leaf certificates it signed (with their
    /// keys), as PEM.
    fn ca_and_two_leaves() -> (String, [(String, String); 2]) {
        let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let ca_pem = ca.self_signed(&ca_key).unwrap().pem();
        let issuer = rcgen::Issuer::new(ca, ca_key);
        let leaf = || {
            let key = rcgen::KeyPair::generate().unwrap();
            let cert = rcgen::CertificateParams::new(vec!["localhost".to_string()]).unwrap().signed_by(&key, &issuer).unwrap();
            (cert.pem(), key.serialize_pem())
        };
        (ca_pem, [leaf(), leaf()])
    }

    #[test]
    fn changed_files_are_taken_once_they_check_out_and_a_lasting_failure_is_reported_once() {
        let dir = tempfile::tempdir().unwrap();
        let (ca, [(cert_a, key_a), (cert_b, key_b)]) = ca_and_two_leaves();
        let (cert, key, ca) = (write(dir.path(), "node.pem", &cert_a), write(dir.path(), "node.key", &key_a), write(dir.path(), "ca.pem", &ca));
        let tls = Tls::load(&cert, &key, &ca).unwrap();
        assert!(tls.current().cert_expires.is_some_and(|t| t > now_unix()), "the expiry is read");
        let mut watcher = Watcher::default();
        let every = Duration::from_secs(1);
        watcher.poll(&tls, every);
        assert_eq!(tls.generation(), 1, "unchanged files are not taken again");

        // A renewal half written: the new certificate with the old key.
        std::fs::write(&cert, &cert_b).unwrap();
        watcher.poll(&tls, every);
        assert_eq!((tls.generation(), watcher.warned), (1, false), "kept out, not yet reported");
        assert!(watcher.failing.as_deref().is_some_and(|w| w.contains("node.key")), "{:?}", watcher.failing);
        watcher.poll(&tls, every);
        assert_eq!((tls.generation(), watcher.warned), (1, true), "the same failure a second time is reported");
        watcher.poll(&tls, every);
        assert_eq!((tls.generation(), watcher.warned), (1, true));

        // The key follows: taken.
        std::fs::write(&key, &key_b).unwrap();
        watcher.poll(&tls, every);
        assert_eq!((tls.generation(), watcher.failing.is_none()), (2, true));
        let clone = tls.clone();
        assert_eq!(clone.generation(), 2, "every clone sees the newest");

        // A file gone missing is a failure like any other; the material stays.
        std::fs::remove_file(&ca).unwrap();
        watcher.poll(&tls, every);
        watcher.poll(&tls, every);
        assert_eq!((tls.generation(), watcher.warned), (2, true));
    }

    #[test]
    fn a_rate_limit_lets_the_first_through_and_counts_the_rest() {
        let mut limit = RateLimit::default();
        assert_eq!(limit.allow(Duration::from_secs(60)).as_deref(), Some(""));
        assert_eq!(limit.allow(Duration::from_secs(60)), None);
        assert_eq!(limit.allow(Duration::from_secs(60)), None);
        assert_eq!(limit.allow(Duration::ZERO).as_deref(), Some(" (2 more since the last warning)"));
    }

    #[test]
    fn the_flags_are_all_three_or_none() {
        assert!(TlsArgs::default().load().unwrap().is_none());
        let half = TlsArgs { tls_cert: Some("a".into()), ..Default::default() };
        assert!(matches!(half.load(), Err(TlsError::Incomplete)));
    }
}
