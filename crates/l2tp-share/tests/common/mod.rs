//! Test bed: a TCP echo service, modem models, a resource server and a client, all on
//! loopback in this process.
#![allow(dead_code)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bulkhead_l2tp_share::profile::{ClientProfile, Device, ServerProfile};
use bulkhead_modem::emulator::{self, Emulator, Line};
use tokio::net::TcpListener;

/// An echo service that counts the connections it accepted.
pub async fn echo_server() -> (SocketAddr, Arc<AtomicUsize>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let count = Arc::new(AtomicUsize::new(0));
    let c = count.clone();
    tokio::spawn(async move {
        loop {
            let (mut s, _) = l.accept().await.unwrap();
            c.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    (addr, count)
}

pub async fn closed_port() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    l.local_addr().unwrap()
}

/// Starts a modem model; returns its tty link and the address that rings it.
pub async fn modem(
    dir: &std::path::Path,
    name: &str,
    book: Vec<(&str, Line)>,
) -> (PathBuf, SocketAddr) {
    let link = dir.join(name);
    let e = Emulator::bind(emulator::Config {
        link: link.clone(),
        phonebook: book.into_iter().map(|(n, l)| (n.to_string(), l)).collect(),
        listen: Some("127.0.0.1:0".parse().unwrap()),
        speed: 33600,
        ring_interval: Duration::from_millis(300),
    })
    .await
    .unwrap();
    let addr = e.listen_addr().unwrap();
    tokio::spawn(e.run());
    (link, addr)
}

pub fn device(name: &str, tty: PathBuf, outgoing: bool, incoming: bool) -> Device {
    Device {
        name: name.into(),
        tty,
        outgoing,
        incoming,
        dial_timeout: 20,
        forward_incoming: None,
    }
}

pub fn server_profile(
    listen: SocketAddr,
    devices: Vec<Device>,
    directory: &[(&str, &str)],
) -> ServerProfile {
    ServerProfile {
        hostname: "modem-server".into(),
        listen: vec![listen],
        secret: Some("s3cret".into()),
        secrets: HashMap::new(),
        vendor_id: bulkhead_l2tp::ext::DEFAULT_VENDOR_ID,
        hello_interval: 60,
        hide_avps: false,
        devices,
        directory: directory
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect(),
    }
}

pub fn client_profile(server: SocketAddr, secret: &str) -> ClientProfile {
    ClientProfile {
        hostname: "client-a".into(),
        outgoing: Some(server),
        incoming: Some(server),
        secret: Some(secret.into()),
        vendor_id: bulkhead_l2tp::ext::DEFAULT_VENDOR_ID,
        hello_interval: 60,
        hide_avps: false,
        control: PathBuf::from("/nonexistent"),
        directory: HashMap::new(),
    }
}

/// A resource server with one outgoing modem whose phone book reaches `far` as
/// 5551234, in the directory as `name`.
pub async fn one_modem_server(
    dir: &std::path::Path,
    far: SocketAddr,
    name: &str,
) -> bulkhead_l2tp_share::server::Running {
    let (tty, _) = modem(dir, "ttyOne", vec![("5551234", Line::Tcp(far.to_string()))]).await;
    let profile = server_profile(
        "127.0.0.1:0".parse().unwrap(),
        vec![device("m0", tty, true, false)],
        &[(name, "5551234")],
    );
    bulkhead_l2tp_share::server::start(profile).await.unwrap()
}
