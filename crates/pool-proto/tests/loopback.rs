//! The tokio client against a tokio server stub over real loopback TCP: the stub runs
//! the crate's server state machine and plays gateway and program at once.
use bulkhead_pool_proto::client::{Client, ClientError, Transport};
use bulkhead_pool_proto::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const TOKEN: &str = "bhp_s3cret";

/// Serves one connection: allocates to `alice` with `TOKEN`, echoes DATA upper-cased,
/// and on DEALLOCATE sends a last line before CONFIRMED (the program's cleanup).
async fn serve(sock: TcpStream) -> Result<(), ClientError> {
    let mut t = Transport::new(sock, Connection::server());
    let mut next_session = 1;
    loop {
        match t.recv().await? {
            Frame::Hello { .. } => {} // WELCOME queued and sent by the transport
            Frame::Allocate(a) => {
                let refusal = if a.program != "upper" {
                    Some(RefuseReason::UnknownProgram)
                } else if a.user != "alice" {
                    Some(RefuseReason::UnknownUser)
                } else if a.credential != TOKEN {
                    Some(RefuseReason::BadCredential)
                } else {
                    None
                };
                let reply = match refusal {
                    Some(reason) => Frame::Refused {
                        reason,
                        message: reason.as_str().into(),
                    },
                    None => {
                        next_session += 1;
                        Frame::Allocated {
                            session: SessionId(next_session - 1),
                        }
                    }
                };
                t.send(&reply).await?;
            }
            // The program crashing mid-session.
            Frame::Data(d) if d == b"die" => {
                t.send(&Frame::Error {
                    code: ErrorCode::ProgramDied,
                    message: "program exited with status 139".into(),
                })
                .await?;
                return Ok(());
            }
            Frame::Data(d) => t.send(&Frame::Data(d.to_ascii_uppercase())).await?,
            Frame::Deallocate { .. } => {
                t.send(&Frame::Data(b"cleaned up\n".to_vec())).await?;
                t.send(&Frame::Confirmed).await?;
            }
            other => panic!("stub got {other:?}"),
        }
    }
}

async fn stub() -> std::net::SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            tokio::spawn(serve(s));
        }
    });
    addr
}

fn req(program: &str, user: &str, credential: &str) -> Allocate {
    Allocate {
        program: program.into(),
        user: user.into(),
        credential: credential.into(),
        wait_ms: 100,
    }
}

#[tokio::test]
async fn allocate_converse_deallocate_over_loopback() {
    let addr = stub().await;
    let mut c = Client::connect_tcp(addr).await.unwrap();

    // Each refusal carries its own reason and leaves the connection usable.
    for (r, want) in [
        (req("nope", "alice", TOKEN), RefuseReason::UnknownProgram),
        (req("upper", "bob", TOKEN), RefuseReason::UnknownUser),
        (req("upper", "alice", "wrong"), RefuseReason::BadCredential),
    ] {
        match c.allocate(r).await {
            Err(ClientError::Refused { reason, .. }) => assert_eq!(reason, want),
            other => panic!("expected {want:?}, got {other:?}"),
        }
        assert_eq!(c.session(), None);
    }

    let s = c.allocate(req("upper", "alice", TOKEN)).await.unwrap();
    assert_eq!(c.session(), Some(s));
    c.send(b"ping").await.unwrap();
    assert_eq!(c.recv().await.unwrap(), b"PING");
    // More than one frame's worth goes out in several DATA frames and comes back whole.
    let big = vec![b'a'; MAX_DATA_LEN + 10];
    c.send(&big).await.unwrap();
    let mut back = Vec::new();
    while back.len() < big.len() {
        back.extend(c.recv().await.unwrap());
    }
    assert_eq!(back, big.to_ascii_uppercase());
    assert_eq!(c.deallocate().await.unwrap(), b"cleaned up\n");
    assert_eq!(c.session(), None);

    // The same connection serves a second session with a new id.
    let s2 = c.allocate(req("upper", "alice", TOKEN)).await.unwrap();
    assert_ne!(s, s2);
}

#[tokio::test]
async fn program_death_reaches_the_client_as_an_error() {
    let addr = stub().await;
    let mut c = Client::connect_tcp(addr).await.unwrap();
    c.allocate(req("upper", "alice", TOKEN)).await.unwrap();
    c.send(b"die").await.unwrap();
    match c.recv().await {
        Err(ClientError::SessionEnded { code, .. }) => assert_eq!(code, ErrorCode::ProgramDied),
        other => panic!("{other:?}"),
    }
    assert_eq!(c.session(), None);
    // The connection is over: nothing more may be sent on it.
    assert!(matches!(
        c.send(b"x").await,
        Err(ClientError::Protocol(ConnError::Closed))
    ));
}

#[tokio::test]
async fn hostile_client_gets_a_reason_then_eof() {
    let addr = stub().await;
    for (bytes, want) in [
        // A frame header announcing more than the bound, nothing else.
        (
            ((MAX_FRAME_LEN + 1) as u32).to_be_bytes().to_vec(),
            RefuseReason::TooLarge,
        ),
        // Not this protocol at all.
        (b"GET / HTTP/1.1\r\n\r\n".to_vec(), RefuseReason::TooLarge),
        // A well-framed HELLO without the magic.
        (
            vec![0, 0, 0, 9, 1, b'X', b'X', b'X', b'X', 0, 1, 0, 1],
            RefuseReason::Malformed,
        ),
        // DATA before any HELLO.
        (
            Frame::Data(b"x".to_vec()).to_bytes().unwrap(),
            RefuseReason::Malformed,
        ),
    ] {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(&bytes).await.unwrap();
        let mut reply = Vec::new();
        s.read_to_end(&mut reply).await.unwrap(); // the stub closes after refusing
        let mut d = Decoder::new();
        let f = d.decode(&mut &reply[..]).unwrap().unwrap();
        assert!(
            matches!(f, Frame::Refused { reason, .. } if reason == want),
            "{bytes:?}: {f:?}"
        );
    }
}
