//! A server connection fed arbitrary client bytes: never panics; everything it
//! queues for the client is a well-formed frame; once it refuses, it is closed.
#![no_main]
use bulkhead_pool_proto::{Connection, Decoder, Frame, SessionId, State};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut s = Connection::server();
    let mut input = data;
    while !input.is_empty() {
        match s.recv(&mut input) {
            Ok(Some(Frame::Allocate(_))) => {
                // Play along so the DATA and DEALLOCATE paths are reached.
                s.send(&Frame::Allocated {
                    session: SessionId(1),
                })
                .unwrap();
            }
            Ok(Some(Frame::Deallocate { confirm: true })) => s.send(&Frame::Confirmed).unwrap(),
            Ok(_) => {}
            Err(_) => {
                assert_eq!(s.state(), State::Closed);
                break;
            }
        }
    }
    let out = s.take_transmit();
    let mut d = Decoder::new();
    let mut rest = &out[..];
    while !rest.is_empty() {
        d.decode(&mut rest)
            .expect("the server writes only valid frames");
    }
    assert_eq!(d.buffered(), 0);
});
