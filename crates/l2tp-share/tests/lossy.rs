//! The control channel through a lossy UDP relay (20% loss, duplicates, reordering of
//! control messages; data passes untouched): tunnels and calls still come up and every
//! request takes effect exactly once.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bulkhead_l2tp_share::client::{CallError, Client};
use bulkhead_l2tp_share::server;
use bulkhead_modem::emulator::Line;
use common::*;
use rand::{Rng, SeedableRng};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UdpSocket;

#[derive(Default)]
struct Stats {
    dropped: AtomicUsize,
    duplicated: AtomicUsize,
    reordered: AtomicUsize,
}

/// Relays between one client (whoever sends to the front socket first) and `server`.
async fn relay(server: SocketAddr, seed: u64) -> (SocketAddr, Arc<Stats>) {
    let front = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
    let back = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
    back.connect(server).await.unwrap();
    let addr = front.local_addr().unwrap();
    let stats = Arc::new(Stats::default());
    let client: Arc<tokio::sync::Mutex<Option<SocketAddr>>> = Arc::default();
    for upstream in [true, false] {
        let (front, back, stats, client) =
            (front.clone(), back.clone(), stats.clone(), client.clone());
        tokio::spawn(async move {
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed + upstream as u64);
            let mut held: Option<Vec<u8>> = None;
            let mut buf = vec![0u8; 65536];
            loop {
                let d = if upstream {
                    let (n, from) = front.recv_from(&mut buf).await.unwrap();
                    *client.lock().await = Some(from);
                    buf[..n].to_vec()
                } else {
                    match back.recv(&mut buf).await {
                        Ok(n) => buf[..n].to_vec(),
                        Err(_) => continue,
                    }
                };
                let send = |d: Vec<u8>| {
                    let (front, back, client) = (front.clone(), back.clone(), client.clone());
                    async move {
                        if upstream {
                            let _ = back.send(&d).await;
                        } else if let Some(c) = *client.lock().await {
                            let _ = front.send_to(&d, c).await;
                        }
                    }
                };
                let control = d.first().is_some_and(|b| b & 0x80 != 0);
                if !control {
                    send(d).await;
                    continue;
                }
                let roll: f64 = rng.gen();
                if roll < 0.2 {
                    stats.dropped.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                if roll < 0.3 {
                    stats.duplicated.fetch_add(1, Ordering::Relaxed);
                    send(d.clone()).await;
                }
                if roll > 0.9 && held.is_none() {
                    // Hold it back: it goes out after the next control message.
                    stats.reordered.fetch_add(1, Ordering::Relaxed);
                    held = Some(d);
                    continue;
                }
                send(d).await;
                if let Some(h) = held.take() {
                    send(h).await;
                }
            }
        });
    }
    (addr, stats)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_come_up_through_a_lossy_relay() {
    let dir = tempfile::tempdir().unwrap();
    let (echo, accepted) = echo_server().await;
    let (tty, _) = modem(
        dir.path(),
        "ttyL",
        vec![
            ("5551234", Line::Tcp(echo.to_string())),
            ("5557777", Line::Busy),
        ],
    )
    .await;
    let profile = server_profile(
        "127.0.0.1:0".parse().unwrap(),
        vec![device("m0", tty, true, false)],
        &[("PRIMARY_ISP", "5551234")],
    );
    let srv = server::start(profile).await.unwrap();
    let (front, stats) = relay(srv.addrs[0], 42).await;
    let client = Client::new(client_profile(front, "s3cret"));
    let wait = Duration::from_secs(120);
    for i in 0..4u8 {
        // A refused call first: its CDN comes only after the device is free again.
        match client.dial("5557777", None, wait).await {
            Err(CallError::Refused(rc)) => assert_eq!(rc.result, 8),
            Err(e) => panic!("{e}"),
            Ok(_) => panic!("busy line connected"),
        }
        let call = client.dial("PRIMARY_ISP", None, wait).await.unwrap();
        let mut s = call.into_stream();
        let msg = [b'a' + i; 100];
        s.write_all(&msg).await.unwrap();
        let mut back = [0u8; 100];
        s.read_exact(&mut back).await.unwrap();
        assert_eq!(back, msg);
        drop(s);
        // Hanging up is asynchronous; the echo service counts one connection per call.
        let mut tries = 0;
        while accepted.load(Ordering::SeqCst) != i as usize + 1 {
            tries += 1;
            assert!(
                tries < 100,
                "expected {} dials, saw {}",
                i + 1,
                accepted.load(Ordering::SeqCst)
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // The device is freed after the hang-up: wait for it before the next round.
        let mut tries = 0;
        loop {
            match client.dial("5557777", None, wait).await {
                Err(CallError::Refused(rc)) if rc.result == 4 => {
                    tries += 1;
                    assert!(tries < 200, "device never came free");
                }
                Err(CallError::Refused(rc)) if rc.result == 8 => break,
                other => panic!("{:?}", other.err()),
            }
        }
    }
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        4,
        "each OCRQ dialed exactly once"
    );
    let (d, u, r) = (
        stats.dropped.load(Ordering::Relaxed),
        stats.duplicated.load(Ordering::Relaxed),
        stats.reordered.load(Ordering::Relaxed),
    );
    assert!(
        d >= 5 && u >= 2 && r >= 2,
        "relay was not lossy enough: {d} dropped, {u} duplicated, {r} reordered"
    );
    srv.abort();
}
