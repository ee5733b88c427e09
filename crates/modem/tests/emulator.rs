//! The modem model driven through its PTY by the DTE driver: dial, data, escape and
//! hang-up, result codes, ringing and answering, busy while in a call; two modem models
//! calling each other through the phone-line handshake.

use std::collections::HashMap;
use std::time::Duration;

use bulkhead_modem::dte::{Dte, DteError};
use bulkhead_modem::emulator::{Config, Emulator, Line};
use bulkhead_modem::hayes::Code;
use bulkhead_modem::phoneline;
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
    // A second caller while the line is in use hears BUSY and is hung up on.
    let mut second = TcpStream::connect(addr).await.unwrap();
    let mut heard = Vec::new();
    second.read_to_end(&mut heard).await.unwrap();
    assert_eq!(heard, b"BUSY\r\n");
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

const WAIT: Duration = Duration::from_secs(10);

/// Reads the DTE's line until `needle` (bounded in time); returns what came before and
/// what came after it.
async fn read_to(dte: &mut Dte, needle: &str) -> (Vec<u8>, Vec<u8>) {
    let (tty, mut text) = dte.data();
    let fut = async {
        loop {
            if let Some(at) = text
                .windows(needle.len())
                .position(|w| w == needle.as_bytes())
            {
                let after = text.split_off(at + needle.len());
                text.truncate(at);
                return (text, after);
            }
            let mut c = [0u8; 256];
            let n = tty.read(&mut c).await.unwrap();
            assert!(n > 0, "modem line closed");
            text.extend_from_slice(&c[..n]);
        }
    };
    tokio::time::timeout(WAIT, fut)
        .await
        .unwrap_or_else(|_| panic!("no {needle:?} from the modem in time"))
}

async fn read_past(dte: &mut Dte, needle: &str) -> Vec<u8> {
    read_to(dte, needle).await.1
}

/// Reads an S-register through the DTE's line.
async fn register(dte: &mut Dte, n: u8) -> u8 {
    dte.data()
        .0
        .write_all(format!("ATS{n}?\r").as_bytes())
        .await
        .unwrap();
    let (before, _) = read_to(dte, "\r\nOK\r\n").await;
    let text = String::from_utf8_lossy(&before).into_owned();
    // RING lines may come before the value.
    text.lines()
        .map(str::trim)
        .find(|l| l.len() == 3 && l.bytes().all(|b| b.is_ascii_digit()))
        .unwrap_or_else(|| panic!("no register value in {text:?}"))
        .parse()
        .unwrap()
}

/// Reads exactly `want.len()` call bytes (after `first`, already read) and compares.
async fn expect_data(dte: &mut Dte, first: Vec<u8>, want: &[u8]) {
    let (tty, left) = dte.data();
    let mut got = first;
    got.extend(left);
    while got.len() < want.len() {
        let mut c = [0u8; 256];
        let n = tokio::time::timeout(WAIT, tty.read(&mut c))
            .await
            .expect("call data in time")
            .unwrap();
        assert!(n > 0, "modem line closed");
        got.extend_from_slice(&c[..n]);
    }
    assert_eq!(String::from_utf8_lossy(&got), String::from_utf8_lossy(want));
}

async fn dte(link: &std::path::Path) -> Dte {
    let mut d = Dte::open(link).unwrap();
    d.init().await.unwrap();
    d
}

/// Two modem models, A's phone book reaching B as a modem; both DTEs initialised.
async fn pair(dir: &tempfile::TempDir) -> (Dte, Dte, std::net::SocketAddr) {
    let (link_b, addr_b) = modem(dir, "ttyB", HashMap::new()).await;
    let book = HashMap::from([("200".to_string(), Line::Modem(addr_b.to_string()))]);
    let (link_a, _) = modem(dir, "ttyA", book).await;
    (dte(&link_a).await, dte(&link_b).await, addr_b)
}

/// A dials B; B's DTE answers at the first RING. CONNECT on A only after B answered.
async fn call_and_answer(mut a: Dte, b: &mut Dte) -> Dte {
    let dialing = tokio::spawn(async move {
        let r = a.dial("200", WAIT).await;
        (a, r)
    });
    b.wait_ring().await.unwrap();
    b.wait_ring().await.unwrap();
    assert!(
        !dialing.is_finished(),
        "the calling modem said its result before the far modem answered"
    );
    assert_eq!(b.answer(WAIT).await.unwrap(), 33600);
    let (a, r) = dialing.await.unwrap();
    assert_eq!(r.unwrap(), 33600);
    a
}

/// Bytes both ways through an A–B call; none of the handshake shows on either side.
async fn exchange(a: &mut Dte, b: &mut Dte, tag: &str) {
    let ab = format!("{tag}: from A to B");
    a.data().0.write_all(ab.as_bytes()).await.unwrap();
    expect_data(b, Vec::new(), ab.as_bytes()).await;
    let ba = format!("{tag}: from B to A");
    b.data().0.write_all(ba.as_bytes()).await.unwrap();
    expect_data(a, Vec::new(), ba.as_bytes()).await;
}

#[tokio::test]
async fn modem_calls_modem_connect_after_answer_and_bytes_flow() {
    let dir = tempfile::tempdir().unwrap();
    let (a, mut b, _) = pair(&dir).await;
    let mut a = call_and_answer(a, &mut b).await;
    exchange(&mut a, &mut b, "first").await;
    // A hangs up: B loses carrier.
    a.hangup().await.unwrap();
    read_past(&mut b, "NO CARRIER").await;
}

#[tokio::test]
async fn busy_to_modem_and_plain_callers_while_in_a_call() {
    let dir = tempfile::tempdir().unwrap();
    let (a, mut b, addr_b) = pair(&dir).await;
    let mut a = call_and_answer(a, &mut b).await;
    // C dials B through its phone book, then directly: BUSY both times.
    let book = HashMap::from([("200".to_string(), Line::Modem(addr_b.to_string()))]);
    let (link_c, _) = modem(&dir, "ttyC", book).await;
    let mut c = dte(&link_c).await;
    for number in ["200".to_string(), format!("modem:{addr_b}")] {
        match c.dial(&number, WAIT).await {
            Err(DteError::Result(code)) => assert_eq!(code, Code::Busy, "{number}"),
            other => panic!("{number}: {other:?}"),
        }
    }
    // A plain caller reads BUSY, then the connection ends.
    let mut plain = TcpStream::connect(addr_b).await.unwrap();
    let mut heard = Vec::new();
    tokio::time::timeout(WAIT, plain.read_to_end(&mut heard))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(heard, b"BUSY\r\n");
    // The call in progress is untouched.
    exchange(&mut a, &mut b, "still up").await;
}

#[tokio::test]
async fn no_answer_after_s7_and_the_far_modem_stops_ringing() {
    let dir = tempfile::tempdir().unwrap();
    let (mut a, mut b, addr_b) = pair(&dir).await;
    a.command("S7=2", WAIT).await.unwrap();
    let (dialed, rang) = tokio::join!(a.dial("200", WAIT), b.wait_ring());
    rang.unwrap();
    match dialed {
        Err(DteError::Result(code)) => assert_eq!(code, Code::NoAnswer),
        other => panic!("{other:?}"),
    }
    // A hung up: B's ring count clears (bounded in time, the hang-up travels over TCP).
    let deadline = tokio::time::Instant::now() + WAIT;
    while register(&mut b, 1).await != 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "B kept ringing after A gave up"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The line is free: a new caller rings B instead of hearing BUSY, and is answered.
    let mut plain = TcpStream::connect(addr_b).await.unwrap();
    plain.write_all(b"after").await.unwrap();
    b.wait_ring().await.unwrap();
    assert_eq!(b.answer(WAIT).await.unwrap(), 33600);
    expect_data(&mut b, Vec::new(), b"after").await;
}

#[tokio::test]
async fn auto_answer_between_modem_models() {
    let dir = tempfile::tempdir().unwrap();
    let (mut a, mut b, _) = pair(&dir).await;
    b.command("S0=2", WAIT).await.unwrap();
    assert_eq!(a.dial("200", WAIT).await.unwrap(), 33600);
    // B's DTE sees two RINGs, then CONNECT; the call data starts right after it.
    let after = read_past(&mut b, "CONNECT 33600\r\n").await;
    assert!(after.is_empty(), "{after:?}");
    exchange(&mut a, &mut b, "auto").await;
}

#[tokio::test]
async fn plain_caller_bytes_sent_before_the_answer_all_reach_the_dte() {
    let dir = tempfile::tempdir().unwrap();
    let (link, addr) = modem(&dir, "ttyE", HashMap::new()).await;
    let mut b = dte(&link).await;
    let mut caller = TcpStream::connect(addr).await.unwrap();
    caller.write_all(b"early bytes").await.unwrap();
    // Several RINGs: the modem has long had those bytes by the time it answers.
    for _ in 0..3 {
        b.wait_ring().await.unwrap();
    }
    assert_eq!(b.answer(WAIT).await.unwrap(), 33600);
    caller.write_all(b", then more").await.unwrap();
    expect_data(&mut b, Vec::new(), b"early bytes, then more").await;
    // The plain caller hears the DTE and nothing of the handshake.
    b.data().0.write_all(b"hi").await.unwrap();
    let mut got = [0u8; 2];
    caller.read_exact(&mut got).await.unwrap();
    assert_eq!(&got, b"hi");
}

#[tokio::test]
async fn caller_classified_after_the_answer_plain_or_modem() {
    let dir = tempfile::tempdir().unwrap();
    let (link, addr) = modem(&dir, "ttyF", HashMap::new()).await;
    let mut b = dte(&link).await;

    // A plain caller whose first bytes happen to start like the preamble: its bytes are
    // held until they part from the preamble, then all delivered; no ANSWER is sent.
    let mut plain = TcpStream::connect(addr).await.unwrap();
    plain.write_all(&phoneline::PREAMBLE[..5]).await.unwrap();
    b.wait_ring().await.unwrap();
    assert_eq!(b.answer(WAIT).await.unwrap(), 33600);
    plain.write_all(b"xyz").await.unwrap();
    let mut want = phoneline::PREAMBLE[..5].to_vec();
    want.extend_from_slice(b"xyz");
    expect_data(&mut b, Vec::new(), &want).await;
    b.data().0.write_all(b"ok").await.unwrap();
    let mut got = [0u8; 2];
    plain.read_exact(&mut got).await.unwrap();
    assert_eq!(&got, b"ok");
    drop(plain);
    read_past(&mut b, "NO CARRIER").await;

    // A modem caller whose preamble is still incomplete at the answer: ANSWER follows
    // the rest of it, and only the call data reaches the DTE.
    let mut slow = TcpStream::connect(addr).await.unwrap();
    slow.write_all(&phoneline::PREAMBLE[..3]).await.unwrap();
    b.wait_ring().await.unwrap();
    assert_eq!(b.answer(WAIT).await.unwrap(), 33600);
    slow.write_all(&phoneline::PREAMBLE[3..]).await.unwrap();
    slow.write_all(b"data").await.unwrap();
    let mut status = [0u8; 8];
    slow.read_exact(&mut status).await.unwrap();
    assert_eq!(&status, phoneline::ANSWER);
    expect_data(&mut b, Vec::new(), b"data").await;
}

/// DTR dropped by the DTE (output speed B0, as POSIX hangs up a modem): the model hangs
/// up at once (&D2) and says NO CARRIER; with &D0 it keeps the call.
#[tokio::test]
async fn dtr_drop_hangs_up() {
    let dir = tempfile::tempdir().unwrap();
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let far = l.local_addr().unwrap().to_string();
    let book = HashMap::from([("1".to_string(), Line::Tcp(far))]);
    let (link, _) = modem(&dir, "ttyDtr", book).await;
    let mut dte = dte(&link).await;
    dte.dial("1", WAIT).await.unwrap();
    let (mut conn, _) = l.accept().await.unwrap();
    let saved = dte.data().0.drop_dtr().unwrap();
    read_to(&mut dte, "NO CARRIER").await;
    // The far end sees the hang-up.
    let mut b = [0u8; 8];
    let n = tokio::time::timeout(WAIT, conn.read(&mut b))
        .await
        .expect("hang-up in time")
        .unwrap();
    assert_eq!(n, 0);
    dte.data().0.restore(&saved).unwrap();
    dte.command("", WAIT).await.unwrap();

    // &D0: DTR is ignored, the call goes on.
    dte.command("&D0", WAIT).await.unwrap();
    dte.dial("1", WAIT).await.unwrap();
    let (mut conn, _) = l.accept().await.unwrap();
    let saved = dte.data().0.drop_dtr().unwrap();
    conn.write_all(b"still up").await.unwrap();
    expect_data(&mut dte, Vec::new(), b"still up").await;
    dte.data().0.restore(&saved).unwrap();
    // The DTE's hang-up falls back to the escape when DTR is ignored.
    dte.hangup().await.unwrap();
    let n = tokio::time::timeout(WAIT, conn.read(&mut b))
        .await
        .expect("hang-up in time")
        .unwrap();
    assert_eq!(n, 0);
}

/// Back-to-back dials after hang-ups, each answered only by CONNECT: a reply left on
/// the line from a former command is never taken for the next one.
#[tokio::test]
async fn dials_after_hang_ups_wait_for_connect() {
    let dir = tempfile::tempdir().unwrap();
    let echo = echo_server().await;
    let book = HashMap::from([("1".to_string(), Line::Tcp(echo))]);
    let (link, _) = modem(&dir, "ttySeq", book).await;
    let mut dte = dte(&link).await;
    for i in 0..20u32 {
        // A stray OK on the line, as a modem one step behind would leave.
        dte.data().0.write_all(b"AT\r").await.unwrap();
        assert_eq!(dte.dial("1", WAIT).await.unwrap(), 33600, "call {i}");
        let msg = format!("call {i}");
        dte.data().0.write_all(msg.as_bytes()).await.unwrap();
        expect_data(&mut dte, Vec::new(), msg.as_bytes()).await;
        dte.hangup().await.unwrap();
    }
}
