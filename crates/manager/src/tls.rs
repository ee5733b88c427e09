//! TLS for the TCP API (rustls, ring provider). The daemon serves the
//! configured certificate, or a self-signed pair it makes once under its data
//! directory; clients trust a CA file or pin the certificate's SHA-256.

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use sha2::{Digest, Sha256};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        source: rustls::pki_types::pem::Error,
    },
    #[error("writing {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0} holds no certificate")]
    NoCertificate(PathBuf),
    #[error("TLS fingerprint {0:?} is not a SHA-256 (64 hex digits, colons allowed)")]
    BadFingerprint(String),
    #[error(
        "only one of {0} and {1} exists: remove it to have a new pair made, or restore the other"
    )]
    HalfPair(PathBuf, PathBuf),
    #[error("generating a self-signed certificate: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("TLS: {0}")]
    Rustls(#[from] rustls::Error),
}

/// ring, not aws-lc-rs: it builds with the C compiler alone (aws-lc wants
/// more toolchain than bootstrap installs). rustls 0.23.48 deprecates it for
/// lacking post-quantum key exchange; the classical suites it offers are
/// what this API needs on a management network.
#[allow(deprecated)]
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// SHA-256 of a certificate's DER, as `AB:CD:...` (what `openssl x509
/// -fingerprint -sha256` prints).
pub fn fingerprint(cert: &[u8]) -> String {
    let d = Sha256::digest(cert);
    let hex: Vec<String> = d.iter().map(|b| format!("{b:02X}")).collect();
    hex.join(":")
}

/// Parses a SHA-256 fingerprint: 64 hex digits, any case, colons optional,
/// an optional `sha256:` prefix.
pub fn parse_fingerprint(s: &str) -> Result<[u8; 32], TlsError> {
    let bad = || TlsError::BadFingerprint(s.to_string());
    let t = s.trim();
    let t = t
        .strip_prefix("sha256:")
        .or_else(|| t.strip_prefix("SHA256:"))
        .unwrap_or(t);
    let hex: Vec<u8> = t.bytes().filter(|b| *b != b':').collect();
    if hex.len() != 64 {
        return Err(bad());
    }
    let mut out = [0u8; 32];
    for (i, pair) in hex.chunks(2).enumerate() {
        let p = std::str::from_utf8(pair).map_err(|_| bad())?;
        out[i] = u8::from_str_radix(p, 16).map_err(|_| bad())?;
    }
    Ok(out)
}

/// The fingerprint of the first certificate in a PEM file (what a client
/// pins for a daemon whose certificate file it can read).
pub fn file_fingerprint(path: &Path) -> Result<String, TlsError> {
    let c = CertificateDer::from_pem_file(path).map_err(|source| TlsError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    Ok(fingerprint(&c))
}

/// What the daemon serves: the server config and the leaf's fingerprint.
pub struct ServerTls {
    pub config: Arc<rustls::ServerConfig>,
    pub fingerprint: String,
    pub cert_path: PathBuf,
    /// True when the pair was made by this start.
    pub generated: bool,
}

/// Loads `cert`/`key` when configured, otherwise the daemon's own pair under
/// `<data_dir>/tls/`, made on first use.
pub fn server(
    configured: Option<(&Path, &Path)>,
    data_dir: &Path,
    names: &[String],
) -> Result<ServerTls, TlsError> {
    let (cert, key, generated) = match configured {
        Some((c, k)) => (c.to_path_buf(), k.to_path_buf(), false),
        None => {
            let dir = data_dir.join("tls");
            let (c, k) = (dir.join("cert.pem"), dir.join("key.pem"));
            let generated = ensure_self_signed(&dir, &c, &k, names)?;
            (c, k, generated)
        }
    };
    let read_err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| TlsError::Read { path, source }
    };
    let chain = CertificateDer::pem_file_iter(&cert)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(read_err(&cert))?;
    let leaf = chain
        .first()
        .ok_or_else(|| TlsError::NoCertificate(cert.clone()))?;
    let fingerprint = fingerprint(leaf);
    let key_der = PrivateKeyDer::from_pem_file(&key).map_err(read_err(&key))?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(chain, key_der)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(ServerTls {
        config: Arc::new(config),
        fingerprint,
        cert_path: cert,
        generated,
    })
}

/// Makes a self-signed pair (ECDSA P-256) unless both files exist. The key is
/// created 0600 in a 0700 directory, never rewritten.
fn ensure_self_signed(
    dir: &Path,
    cert: &Path,
    key: &Path,
    names: &[String],
) -> Result<bool, TlsError> {
    match (cert.exists(), key.exists()) {
        (true, true) => return Ok(false),
        (false, false) => {}
        _ => return Err(TlsError::HalfPair(cert.to_path_buf(), key.to_path_buf())),
    }
    let write_err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| TlsError::Write { path, source }
    };
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(write_err(dir))?;
    let mut params = rcgen::CertificateParams::new(names.to_vec())?;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "bulkheadd");
    let pair = rcgen::KeyPair::generate()?;
    let c = params.self_signed(&pair)?;
    let create = |path: &Path, mode: u32, text: &str| -> std::io::Result<()> {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(path)?;
        f.write_all(text.as_bytes())?;
        f.sync_all()
    };
    // Key first: a crash between the two leaves a half pair that is refused,
    // never a certificate without its key silently replaced.
    create(key, 0o600, &pair.serialize_pem()).map_err(write_err(key))?;
    create(cert, 0o644, &c.pem()).map_err(write_err(cert))?;
    Ok(true)
}

/// How a client decides to trust the daemon's certificate.
#[derive(Debug, Clone)]
pub enum Trust {
    /// The leaf certificate's SHA-256, as the daemon logs it.
    Fingerprint(String),
    /// PEM file of trust anchors; the server name is checked against them.
    CaFile(PathBuf),
}

impl Trust {
    pub fn client_config(&self) -> Result<Arc<rustls::ClientConfig>, TlsError> {
        let builder = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?;
        let mut config = match self {
            Trust::Fingerprint(f) => builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(Pinned {
                    want: parse_fingerprint(f)?,
                    provider: provider(),
                }))
                .with_no_client_auth(),
            Trust::CaFile(path) => {
                let mut roots = rustls::RootCertStore::empty();
                let certs = CertificateDer::pem_file_iter(path)
                    .and_then(|it| it.collect::<Result<Vec<_>, _>>())
                    .map_err(|source| TlsError::Read {
                        path: path.clone(),
                        source,
                    })?;
                if certs.is_empty() {
                    return Err(TlsError::NoCertificate(path.clone()));
                }
                for c in certs {
                    roots.add(c)?;
                }
                builder.with_root_certificates(roots).with_no_client_auth()
            }
        };
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }
}

/// The server name a client checks for `host:port` (`[v6]:port` too).
pub fn server_name(addr: &str) -> ServerName<'static> {
    let host = addr.rsplit_once(':').map(|(h, _)| h).unwrap_or(addr);
    let host = host.trim_start_matches('[').trim_end_matches(']');
    ServerName::try_from(host.to_string())
        .unwrap_or_else(|_| ServerName::try_from("localhost").expect("static name"))
}

/// Accepts exactly the certificate whose SHA-256 was pinned, whatever its
/// names or issuer (the daemon's own self-signed one); the handshake
/// signature is still verified against that certificate's key.
#[derive(Debug)]
struct Pinned {
    want: [u8; 32],
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for Pinned {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if Sha256::digest(end_entity.as_ref()).as_slice() == self.want {
            return Ok(ServerCertVerified::assertion());
        }
        Err(rustls::Error::General(format!(
            "the daemon's certificate (SHA-256 {}) is not the pinned one",
            fingerprint(end_entity)
        )))
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_parse_in_every_spelling() {
        let f = fingerprint(b"x");
        assert_eq!(f.len(), 95);
        let raw = parse_fingerprint(&f).unwrap();
        assert_eq!(
            parse_fingerprint(&f.replace(':', "").to_lowercase()).unwrap(),
            raw
        );
        assert_eq!(parse_fingerprint(&format!("sha256:{f}")).unwrap(), raw);
        assert!(parse_fingerprint("AB:CD").is_err());
        assert!(parse_fingerprint(&"zz".repeat(32)).is_err());
    }

    #[test]
    fn self_signed_pair_is_made_once_with_a_private_key() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        let names = vec!["localhost".to_string(), "127.0.0.1".to_string()];
        let a = server(None, d.path(), &names).unwrap();
        assert!(a.generated);
        let key = d.path().join("tls/key.pem");
        let mode = std::fs::metadata(&key).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let b = server(None, d.path(), &names).unwrap();
        assert!(!b.generated);
        assert_eq!(a.fingerprint, b.fingerprint);
        std::fs::remove_file(d.path().join("tls/cert.pem")).unwrap();
        assert!(matches!(
            server(None, d.path(), &names),
            Err(TlsError::HalfPair(..))
        ));
    }

    #[test]
    fn server_names_from_addresses() {
        assert!(matches!(
            server_name("127.0.0.1:7480"),
            ServerName::IpAddress(_)
        ));
        assert!(matches!(
            server_name("[::1]:7480"),
            ServerName::IpAddress(_)
        ));
        assert!(matches!(
            server_name("host.example.org:7480"),
            ServerName::DnsName(_)
        ));
    }
}
