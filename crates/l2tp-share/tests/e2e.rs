//! End to end on loopback: client → L2TP → resource server → modem model → TCP.

mod common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use bulkhead_l2tp::CallMode;
use bulkhead_l2tp_share::client::{CallError, Client};
use bulkhead_l2tp_share::control;
use bulkhead_l2tp_share::server;
use bulkhead_modem::emulator::Line;
use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const WAIT: Duration = Duration::from_secs(60);

fn refused(r: Result<impl Sized, CallError>) -> bulkhead_l2tp::ResultCode {
    match r {
        Err(CallError::Refused(rc)) => rc,
        Err(e) => panic!("expected a CDN, got {e}"),
        Ok(_) => panic!("expected a CDN, the call connected"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dial_by_directory_name_and_failures_and_incoming() {
    let dir = tempfile::tempdir().unwrap();
    let (echo, accepted) = echo_server().await;
    let dead = closed_port().await;
    let (tty_out, _) = modem(
        dir.path(),
        "ttyOut",
        vec![
            ("5551234", Line::Tcp(echo.to_string())),
            ("5557777", Line::Busy),
            ("5550000", Line::Tcp(dead.to_string())),
            ("5558888", Line::NoDialtone),
        ],
    )
    .await;
    let (tty_in, ring_addr) = modem(dir.path(), "ttyIn", vec![]).await;
    let profile = server_profile(
        "127.0.0.1:0".parse().unwrap(),
        vec![
            device("out0", tty_out, true, false),
            device("in0", tty_in, false, true),
        ],
        &[
            ("PRIMARY_ISP", "5551234"),
            ("BUSY_ISP", "5557777"),
            ("DEAD_ISP", "5550000"),
            ("CUT_ISP", "5558888"),
        ],
    );
    let srv = server::start(profile).await.unwrap();
    let client = Client::new(client_profile(srv.addrs[0], "s3cret"));

    // Failures first: the server frees the device before it sends the CDN.
    let rc = refused(client.dial("BUSY_ISP", None, WAIT).await);
    assert_eq!(rc.result, 8);
    assert!(CallError::Refused(rc).to_string().starts_with("busy"));
    assert_eq!(refused(client.dial("DEAD_ISP", None, WAIT).await).result, 7);
    assert_eq!(refused(client.dial("CUT_ISP", None, WAIT).await).result, 9);
    let rc = refused(client.dial("NOWHERE", None, WAIT).await);
    assert_eq!(rc.result, 6);
    let text = CallError::Refused(rc).to_string();
    assert!(text.contains("unknown directory name NOWHERE"), "{text}");
    assert_eq!(accepted.load(Ordering::SeqCst), 0);

    // The call by name reaches the echo service and gets its bytes back.
    let call = client.dial("PRIMARY_ISP", None, WAIT).await.unwrap();
    assert_eq!((call.mode, call.speed), (CallMode::Raw, 33600));
    let mut stream = call.into_stream();
    let payload: Vec<u8> = (0..20_000u32).map(|i| (i % 251) as u8).collect();
    stream.write_all(&payload).await.unwrap();
    let mut back = vec![0u8; payload.len()];
    stream.read_exact(&mut back).await.unwrap();
    assert_eq!(back, payload);
    assert_eq!(accepted.load(Ordering::SeqCst), 1);

    // While the only outgoing device is in a call, another dial is refused as temporary.
    assert_eq!(
        refused(client.dial("PRIMARY_ISP", None, WAIT).await).result,
        4
    );
    drop(stream);

    // Incoming: arm, an outside caller rings the modem, the call comes back through the tunnel.
    let armed = client
        .answer(None, Duration::from_secs(60), Some(CallMode::Raw))
        .await
        .unwrap();
    let mut outside = TcpStream::connect(ring_addr).await.unwrap();
    let call = armed.wait_call().await.unwrap();
    assert_eq!(call.mode, CallMode::Raw);
    let mut stream = call.into_stream();
    outside.write_all(b"hello from outside").await.unwrap();
    let mut got = [0u8; 18];
    stream.read_exact(&mut got).await.unwrap();
    assert_eq!(&got, b"hello from outside");
    stream.write_all(b"hello from the client").await.unwrap();
    let mut got = [0u8; 21];
    outside.read_exact(&mut got).await.unwrap();
    assert_eq!(&got, b"hello from the client");
    // The outside caller hangs up: the client's stream ends.
    drop(outside);
    let mut rest = Vec::new();
    stream.read_to_end(&mut rest).await.unwrap();
    assert!(rest.is_empty());
    srv.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_secret_refuses_the_tunnel() {
    let profile = server_profile("127.0.0.1:0".parse().unwrap(), vec![], &[]);
    let srv = server::start(profile).await.unwrap();
    let client = Client::new(client_profile(srv.addrs[0], "not-the-secret"));
    match client.dial("PRIMARY_ISP", None, WAIT).await {
        Err(CallError::Tunnel(t)) => assert!(
            t.contains("refused the tunnel") && t.contains("result 4"),
            "{t}"
        ),
        Err(e) => panic!("{e}"),
        Ok(_) => panic!("connected with a wrong secret"),
    }
    srv.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn armed_request_can_be_refused_for_an_unknown_line() {
    let dir = tempfile::tempdir().unwrap();
    let (tty_in, _) = modem(dir.path(), "ttyIn2", vec![]).await;
    let profile = server_profile(
        "127.0.0.1:0".parse().unwrap(),
        vec![device("in0", tty_in, false, true)],
        &[],
    );
    let srv = server::start(profile).await.unwrap();
    let client = Client::new(client_profile(srv.addrs[0], "s3cret"));
    let rc = refused(
        client
            .answer(Some("nosuchline"), Duration::from_secs(5), None)
            .await
            .map(|_| ()),
    );
    assert_eq!(rc.result, 6);
    // Arm, then cancel: the line is free again for the next request.
    let armed = client
        .answer(Some("in0"), Duration::from_secs(30), None)
        .await
        .unwrap();
    armed.cancel();
    // Bounded in time, not in tries: a busy host frees the modem later.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let again = loop {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the line never came free"
        );
        // The cancel (CDN) and the next AICRQ travel in order on the same tunnel, but the
        // server frees the modem asynchronously: a temporary refusal may come first.
        match client
            .answer(Some("in0"), Duration::from_secs(30), None)
            .await
        {
            Err(CallError::Refused(rc)) if rc.result == 4 => {
                tokio::time::sleep(Duration::from_millis(5)).await
            }
            other => break other,
        }
    };
    assert!(again.is_ok());
    srv.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hidden_avps_both_ways() {
    let mut profile = server_profile("127.0.0.1:0".parse().unwrap(), vec![], &[]);
    profile.hide_avps = true;
    let srv = server::start(profile).await.unwrap();
    let mut cp = client_profile(srv.addrs[0], "s3cret");
    cp.hide_avps = true;
    let client = Client::new(cp);
    // The tunnel comes up and the OCRQ (hidden Called Number) is read by the server.
    let rc = refused(client.dial("NOWHERE", None, WAIT).await);
    assert_eq!(rc.result, 6);
    assert!(rc.message.unwrap().contains("NOWHERE"));
    srv.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_socket_dial_and_cancelled_answer() {
    use tokio::io::AsyncBufReadExt;
    let dir = tempfile::tempdir().unwrap();
    let (echo, _) = echo_server().await;
    let (tty_out, _) = modem(
        dir.path(),
        "ttyC",
        vec![("5551234", Line::Tcp(echo.to_string()))],
    )
    .await;
    let (tty_in, _) = modem(dir.path(), "ttyD", vec![]).await;
    let profile = server_profile(
        "127.0.0.1:0".parse().unwrap(),
        vec![
            device("out0", tty_out, true, false),
            device("in0", tty_in, false, true),
        ],
        &[("PRIMARY_ISP", "5551234")],
    );
    let srv = server::start(profile).await.unwrap();
    let mut cp = client_profile(srv.addrs[0], "s3cret");
    cp.directory.insert("ECHO".into(), "5551234".into());
    let sock = dir.path().join("client.sock");
    let client = Client::new(cp);
    let s2 = sock.clone();
    tokio::spawn(async move {
        bulkhead_l2tp_share::control::serve_control(client, &s2, std::future::pending()).await
    });
    // serve_control binds the socket in its own task: wait (bounded in time,
    // not in iterations, which a busy host runs through in a blink) until it
    // accepts.
    let connect = || async {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(s) = tokio::net::UnixStream::connect(&sock).await {
                return s;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "control socket never appeared"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    };
    // DIAL through the client's own directory name.
    let mut s = tokio::io::BufReader::new(connect().await);
    s.get_mut().write_all(b"DIAL ECHO auto\n").await.unwrap();
    let mut line = String::new();
    s.read_line(&mut line).await.unwrap();
    assert_eq!(line, "CONNECTED raw 33600\n");
    // After CONNECTED the connection carries frames: tag, length, payload.
    let mut f = Vec::new();
    control::encode(control::DATA, b"over the control socket", &mut f);
    s.get_mut().write_all(&f).await.unwrap();
    let mut back = [0u8; 26];
    s.read_exact(&mut back).await.unwrap();
    assert_eq!(&back[..3], b"D\x00\x17");
    assert_eq!(&back[3..], b"over the control socket");
    // Hanging up: the daemon confirms with the call's end.
    let mut f = Vec::new();
    control::encode(control::HANG_UP, b"", &mut f);
    s.get_mut().write_all(&f).await.unwrap();
    let mut rest = Vec::new();
    s.read_to_end(&mut rest).await.unwrap();
    assert_eq!(rest, b"X\x00\x08Lhung up");
    drop(s);
    // ANSWER, then the user gives up: the armed request is cancelled, the line freed.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    for attempt in 0.. {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the incoming line never came free"
        );
        let mut s = tokio::io::BufReader::new(connect().await);
        s.get_mut().write_all(b"ANSWER in0 60 raw\n").await.unwrap();
        let mut line = String::new();
        s.read_line(&mut line).await.unwrap();
        if line.starts_with("ERROR no device free") {
            // The previous round's cancel is still being processed.
            tokio::time::sleep(Duration::from_millis(5)).await;
            continue;
        }
        assert_eq!(line, "ARMED\n");
        if attempt >= 1 {
            break;
        }
        drop(s);
    }
    srv.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dialing_a_modem_already_in_a_call_is_busy() {
    use bulkhead_modem::dte::Dte;
    let dir = tempfile::tempdir().unwrap();
    // The far end is another modem model, and its line is taken: someone rang it and
    // its DTE answered.
    let (tty_far, far_addr) = modem(dir.path(), "ttyFar", vec![]).await;
    let mut far = Dte::open(&tty_far).unwrap();
    far.init().await.unwrap();
    let mut someone = TcpStream::connect(far_addr).await.unwrap();
    far.wait_ring().await.unwrap();
    far.answer(WAIT).await.unwrap();
    let (tty_out, _) = modem(
        dir.path(),
        "ttyOutM",
        vec![("5552000", Line::Modem(far_addr.to_string()))],
    )
    .await;
    let profile = server_profile(
        "127.0.0.1:0".parse().unwrap(),
        vec![device("out0", tty_out, true, false)],
        &[("FAR_MODEM", "5552000")],
    );
    let srv = server::start(profile).await.unwrap();
    let client = Client::new(client_profile(srv.addrs[0], "s3cret"));
    // The calling modem hears BUSY from the far modem: CDN result 8.
    let rc = refused(client.dial("FAR_MODEM", None, WAIT).await);
    assert_eq!(rc.result, 8, "{rc:?}");
    // The far modem's own call is untouched.
    someone.write_all(b"still here").await.unwrap();
    let (tty, mut got) = far.data();
    tokio::time::timeout(WAIT, async {
        while got.len() < 10 {
            let mut c = [0u8; 64];
            let n = tty.read(&mut c).await.unwrap();
            assert!(n > 0, "the far modem's line closed");
            got.extend_from_slice(&c[..n]);
        }
    })
    .await
    .expect("the far modem's call data in time");
    assert_eq!(&got, b"still here");
    srv.abort();
}

/// A far end that greets each call with its number ("far end N\n"), echoes, and
/// records what each call sent it.
async fn numbered_echo() -> (
    std::net::SocketAddr,
    std::sync::Arc<std::sync::Mutex<Vec<Vec<u8>>>>,
) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let got = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let g = got.clone();
    tokio::spawn(async move {
        for n in 0usize.. {
            let (mut s, _) = l.accept().await.unwrap();
            g.lock().unwrap().push(Vec::new());
            let g = g.clone();
            tokio::spawn(async move {
                s.write_all(format!("far end {n}\n").as_bytes())
                    .await
                    .unwrap();
                let mut b = [0u8; 4096];
                while let Ok(k) = s.read(&mut b).await {
                    if k == 0 {
                        break;
                    }
                    g.lock().unwrap()[n].extend_from_slice(&b[..k]);
                    if s.write_all(&b[..k]).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    (addr, got)
}

/// Fifty short calls back to back on one modem, each dialled right after the last one
/// hung up: every one connects (no CDN 4 while the modem hangs up), only after the
/// modem's CONNECT (the far end's greeting is the first thing the call carries, not a
/// modem result), and carries exactly the caller's bytes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_back_to_back_calls_each_after_connect() {
    let dir = tempfile::tempdir().unwrap();
    let (far, got) = numbered_echo().await;
    let srv = one_modem_server(dir.path(), far, "PRIMARY_ISP").await;
    let client = Client::new(client_profile(srv.addrs[0], "s3cret"));
    const CALLS: usize = 50;
    for i in 0..CALLS {
        let call = match client.dial("PRIMARY_ISP", None, WAIT).await {
            Ok(c) => c,
            Err(e) => panic!("call {i}: {e}"),
        };
        assert_eq!(call.speed, 33600, "call {i}");
        let mut s = call.into_stream();
        let greeting = format!("far end {i}\n");
        let mut first = vec![0u8; greeting.len()];
        tokio::time::timeout(WAIT, s.read_exact(&mut first))
            .await
            .expect("greeting in time")
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&first), greeting, "call {i}");
        let mine = format!("caller's bytes of call {i}");
        s.write_all(mine.as_bytes()).await.unwrap();
        let mut back = vec![0u8; mine.len()];
        tokio::time::timeout(WAIT, s.read_exact(&mut back))
            .await
            .expect("echo in time")
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&back), mine, "call {i}");
        // Hang up; the next dial follows at once.
        drop(s);
    }
    // Each far-end connection got exactly its caller's bytes (bounded wait for the
    // last ones to be recorded).
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let g = got.lock().unwrap().clone();
        let want: Vec<Vec<u8>> = (0..CALLS)
            .map(|i| format!("caller's bytes of call {i}").into_bytes())
            .collect();
        if g == want {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the far end got {:?}",
            g.iter()
                .map(|b| String::from_utf8_lossy(b).into_owned())
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    srv.abort();
}

/// A redial right after the client's hang-up connects.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redial_right_after_a_hang_up_connects() {
    let dir = tempfile::tempdir().unwrap();
    let (echo, _) = echo_server().await;
    let srv = one_modem_server(dir.path(), echo, "PRIMARY_ISP").await;
    let client = Client::new(client_profile(srv.addrs[0], "s3cret"));
    let call = client.dial("PRIMARY_ISP", None, WAIT).await.unwrap();
    let mut s = call.into_stream();
    s.write_all(b"x").await.unwrap();
    let mut b = [0u8; 1];
    s.read_exact(&mut b).await.unwrap();
    drop(s);
    let again = client.dial("PRIMARY_ISP", None, WAIT).await;
    assert!(again.is_ok(), "redial: {:?}", again.err());
    srv.abort();
}
