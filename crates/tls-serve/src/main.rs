//! `bulkhead-tls-serve PORT CERT.pem KEY.pem ANSWER`: HTTPS on PORT with the
//! given pair; every request (read up to its blank line) is answered 200
//! with the line ANSWER, and the connection closed. Blocking, one thread per
//! connection: a test server, not a product.

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::io::{Read, Write};
use std::net::TcpListener;
use std::sync::Arc;
use std::time::Duration;

fn main() {
    if let Err(e) = run() {
        eprintln!("bulkhead-tls-serve: {e}");
        std::process::exit(1);
    }
}

fn run() -> Result<(), String> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [port, cert, key, answer] = args.as_slice() else {
        return Err("usage: bulkhead-tls-serve PORT CERT.pem KEY.pem ANSWER".into());
    };
    let certs = CertificateDer::pem_file_iter(cert)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("{cert}: {e}"))?;
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| format!("{key}: {e}"))?;
    // ring, as the workspace's other TLS users: it builds with cc alone.
    #[allow(deprecated)]
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .and_then(|b| b.with_no_client_auth().with_single_cert(certs, key))
        .map_err(|e| format!("TLS: {e}"))?;
    let config = Arc::new(config);
    let l = TcpListener::bind(("0.0.0.0", port.parse::<u16>().map_err(|e| e.to_string())?))
        .map_err(|e| format!("port {port}: {e}"))?;
    let body = format!("{answer}\n");
    let answer = Arc::new(format!(
        "HTTP/1.0 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    ));
    for s in l.incoming() {
        let Ok(mut s) = s else { continue };
        let (config, answer) = (config.clone(), answer.clone());
        std::thread::spawn(move || {
            // A client that stalls mid-handshake does not hold a thread forever.
            let _ = s.set_read_timeout(Some(Duration::from_secs(30)));
            let Ok(mut conn) = rustls::ServerConnection::new(config) else {
                return;
            };
            let mut tls = rustls::Stream::new(&mut conn, &mut s);
            // The request head, whatever it asks (bounded).
            let mut head = Vec::new();
            let mut b = [0u8; 1024];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 16384 {
                match tls.read(&mut b) {
                    Ok(n) if n > 0 => head.extend_from_slice(&b[..n]),
                    _ => return,
                }
            }
            if tls
                .write_all(answer.as_bytes())
                .and_then(|_| tls.flush())
                .is_ok()
            {
                tls.conn.send_close_notify();
                let _ = tls.flush();
            }
        });
    }
    Ok(())
}
