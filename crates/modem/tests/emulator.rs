//! The modem model driven through its PTY by the DTE driver: dial, data, escape and
//! hang-up, result codes, ringing and answering, busy while in a call.

use std::collections::HashMap;
use std::time::Duration;

use bulkhead_modem::dte::{Dte, DteError};
use bulkhead_modem::emulator::{Config, Emulator, Line};
use bulkhead_modem::hayes::Code;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

async fn echo_server() -> String {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        loop {
            let (mut c, _) = l.accept().await.unwrap();
            tokio::spawn(async move {
                let (mut r, mut w) = c.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    addr
}

async fn closed_port() -> String {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    l.local_addr().unwrap().to_string()
}

async fn modem(
    dir: &tempfile::TempDir,
    name: &str,
    book: HashMap<String, Line>,
) -> (std::path::PathBuf, std::net::SocketAddr) {
    let link = dir.path().join(name);
    let e = Emulator::bind(Config {
        link: link.clone(),
        phonebook: book,
        listen: Some("127.0.0.1:0".parse().unwrap()),
        speed: 33600,
        ring_interval: Duration::from_millis(200),
    })
    .await
    .unwrap();
    let addr = e.listen_addr().unwrap();
    tokio::spawn(e.run());
    (link, addr)
}

#[tokio::test]
async fn dial_exchange_escape_and_hang_up() {
    let dir = tempfile::tempdir().unwrap();
    let echo = echo_server().await;
    let closed = closed_port().await;
    let book = HashMap::from([
        ("5551234".to_string(), Line::Tcp(echo)),
        ("5550000".to_string(), Line::Tcp(closed)),
        ("5557777".to_string(), Line::Busy),
        ("5558888".to_string(), Line::NoDialtone),
        ("5559999".to_string(), Line::NoAnswer),
    ]);
    let (link, _) = modem(&dir, "ttyM0", book).await;
    let mut dte = Dte::open(&link).unwrap();
    dte.init().await.unwrap();
    let wait = Duration::from_secs(10);
    for (n, code) in [
        ("5557777", Code::Busy),
        ("5558888", Code::NoDialtone),
        ("5559999", Code::NoAnswer),
        ("5550000", Code::NoCarrier),
        ("999", Code::NoCarrier),
    ] {
        match dte.dial(n, wait).await {
            Err(DteError::Result(c)) => assert_eq!(c, code, "{n}"),
            other => panic!("{n}: {other:?}"),
        }
    }
    assert_eq!(dte.dial("555-1234", wait).await.unwrap(), 33600);
    {
        let (tty, left) = dte.data();
        assert!(left.is_empty());
        tty.write_all(b"ping +++ through").await.unwrap();
        let mut got = vec![0u8; 16];
        tty.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"ping +++ through");
    }
    dte.hangup().await.unwrap();
    // Back in command mode: a plain AT answers OK.
    dte.command("", wait).await.unwrap();
}

#[tokio::test]
async fn incoming_call_rings_and_is_answered_and_busy_while_in_call() {
    let dir = tempfile::tempdir().unwrap();
    let (link, addr) = modem(&dir, "ttyM1", HashMap::new()).await;
    let mut dte = Dte::open(&link).unwrap();
    dte.init().await.unwrap();
    let mut caller = TcpStream::connect(addr).await.unwrap();
    dte.wait_ring().await.unwrap();
    assert_eq!(dte.answer(Duration::from_secs(5)).await.unwrap(), 33600);
    caller.write_all(b"hello modem").await.unwrap();
    let (tty, _) = dte.data();
    let mut got = vec![0u8; 11];
    tty.read_exact(&mut got).await.unwrap();
    assert_eq!(&got, b"hello modem");
    tty.write_all(b"hi").await.unwrap();
    let mut back = [0u8; 2];
    caller.read_exact(&mut back).await.unwrap();
    assert_eq!(&back, b"hi");
    // A second caller while the line is in use is turned away at once.
    let mut second = TcpStream::connect(addr).await.unwrap();
    let mut b = [0u8; 1];
    assert_eq!(second.read(&mut b).await.unwrap(), 0);
    // The first caller hangs up: the DTE sees NO CARRIER.
    drop(caller);
    let (tty, mut text) = dte.data();
    while !String::from_utf8_lossy(&text).contains("NO CARRIER") {
        let mut c = [0u8; 64];
        let n = tty.read(&mut c).await.unwrap();
        text.extend_from_slice(&c[..n]);
    }
}

#[tokio::test]
async fn auto_answer_after_s0_rings() {
    let dir = tempfile::tempdir().unwrap();
    let (link, addr) = modem(&dir, "ttyM2", HashMap::new()).await;
    let mut dte = Dte::open(&link).unwrap();
    dte.init().await.unwrap();
    dte.command("S0=2", Duration::from_secs(5)).await.unwrap();
    let _caller = TcpStream::connect(addr).await.unwrap();
    dte.wait_ring().await.unwrap();
    dte.wait_ring().await.unwrap();
    // CONNECT may already sit in the DTE's buffer behind the second RING.
    let (tty, mut text) = dte.data();
    while !String::from_utf8_lossy(&text).contains("CONNECT 33600") {
        let mut c = [0u8; 64];
        let n = tty.read(&mut c).await.unwrap();
        text.extend_from_slice(&c[..n]);
    }
}
