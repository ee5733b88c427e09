//! Across hosts: the server and the client in two network namespaces joined by a veth
//! pair. The server's namespace has two addresses; its profile lists one, and a tunnel
//! to the other is refused. Needs root (ip netns).

mod common;

use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use bulkhead_l2tp_share::client::{CallError, Client};
use bulkhead_l2tp_share::server;
use bulkhead_modem::emulator::Line;
use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn ip(args: &str) {
    let ok = Command::new("ip")
        .args(args.split_whitespace())
        .status()
        .expect("run ip")
        .success();
    assert!(ok, "ip {args} failed (root needed)");
}

struct Netns(Vec<String>);

impl Drop for Netns {
    fn drop(&mut self) {
        for n in &self.0 {
            let _ = Command::new("ip").args(["netns", "del", n]).status();
        }
    }
}

/// Moves the calling thread into a named network namespace.
fn enter(name: &str) {
    let f = std::fs::File::open(format!("/var/run/netns/{name}")).expect("netns file");
    // SAFETY: setns(2) on a valid namespace fd; it only changes this thread's namespace.
    let r = unsafe { libc::setns(std::os::fd::AsRawFd::as_raw_fd(&f), libc::CLONE_NEWNET) };
    assert_eq!(r, 0, "setns: {}", std::io::Error::last_os_error());
}

/// Runs `f` on a new thread inside `ns`, with its own tokio runtime.
fn in_ns<T: Send + 'static>(
    ns: String,
    f: impl FnOnce() -> std::pin::Pin<Box<dyn std::future::Future<Output = T>>> + Send + 'static,
) -> std::thread::JoinHandle<T> {
    std::thread::spawn(move || {
        enter(&ns);
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(f())
    })
}

#[test]
fn client_and_server_in_two_namespaces() {
    let tag = std::process::id() % 10000;
    let (srv_ns, cli_ns) = (format!("bh-l2s-{tag}"), format!("bh-l2c-{tag}"));
    let _guard = Netns(vec![srv_ns.clone(), cli_ns.clone()]);
    ip(&format!("netns add {srv_ns}"));
    ip(&format!("netns add {cli_ns}"));
    let (va, vb) = (format!("bhs{tag}"), format!("bhc{tag}"));
    ip(&format!(
        "link add {va} netns {srv_ns} type veth peer name {vb} netns {cli_ns}"
    ));
    ip(&format!("-n {srv_ns} addr add 10.231.0.1/24 dev {va}"));
    ip(&format!("-n {srv_ns} addr add 10.231.0.2/24 dev {va}"));
    ip(&format!("-n {cli_ns} addr add 10.231.0.10/24 dev {vb}"));
    for (ns, dev) in [(&srv_ns, &va), (&cli_ns, &vb)] {
        ip(&format!("-n {ns} link set {dev} up"));
        ip(&format!("-n {ns} link set lo up"));
    }

    // The server side: echo service, modem model and resource server, all in srv_ns.
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<()>();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server_thread = in_ns(srv_ns.clone(), move || {
        Box::pin(async move {
            let dir = tempfile::tempdir().unwrap();
            let (echo, _) = echo_server().await;
            let (tty, _) = modem(
                dir.path(),
                "ttyN",
                vec![("5551234", Line::Tcp(echo.to_string()))],
            )
            .await;
            let profile = server_profile(
                "10.231.0.1:1701".parse().unwrap(),
                vec![device("m0", tty, true, false)],
                &[("PRIMARY_ISP", "5551234")],
            );
            let srv = server::start(profile).await.unwrap();
            ready_tx.send(()).unwrap();
            let _ = stop_rx.await;
            srv.abort();
        })
    });
    ready_rx
        .recv_timeout(Duration::from_secs(60))
        .expect("server ready");

    let client_thread = in_ns(cli_ns.clone(), || {
        Box::pin(async {
            let listed: SocketAddr = "10.231.0.1:1701".parse().unwrap();
            let unlisted: SocketAddr = "10.231.0.2:1701".parse().unwrap();
            let client = Client::new(client_profile(listed, "s3cret"));
            let call = client
                .dial("PRIMARY_ISP", None, Duration::from_secs(60))
                .await
                .expect("call across namespaces");
            let mut s = call.into_stream();
            s.write_all(b"across hosts").await.unwrap();
            let mut back = [0u8; 12];
            s.read_exact(&mut back).await.unwrap();
            assert_eq!(&back, b"across hosts");
            drop(s);
            let other = Client::new(client_profile(unlisted, "s3cret"));
            match other
                .dial("PRIMARY_ISP", None, Duration::from_secs(60))
                .await
            {
                Err(CallError::Tunnel(t)) => assert!(t.contains("10.231.0.2:1701"), "{t}"),
                Err(e) => panic!("unexpected error: {e}"),
                Ok(_) => panic!("a tunnel came up on an address the profile does not list"),
            }
        })
    });
    let r = client_thread.join();
    let _ = stop_tx.send(());
    server_thread.join().unwrap();
    r.unwrap();
}
