//! The host's read path for lines from a (hostile) guest's agent, and the
//! agent's for the host's call answers: bytes split into lines by the framer,
//! each decoded with `decode_agent_line` and `decode_host_line`. Must never
//! panic; a relayed call's request must be one JSON object within the bound,
//! and a call re-encodes to a line that decodes to the same call.
#![no_main]

use bulkhead_agent::proto::{
    check_call_request, decode_agent_line, decode_host_line, encode_line, AgentLine, Call,
    Frame, HostLine, LineDecoder, MAX_REQUEST_BYTES,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let (split, bytes) = match data.split_first() {
        Some((s, rest)) => (*s as usize + 1, rest),
        None => return,
    };
    let mut dec = LineDecoder::new(64 * 1024);
    for chunk in bytes.chunks(split) {
        for frame in dec.push(chunk) {
            let Frame::Line(line) = frame else { continue };
            if let Ok(AgentLine::Call { call, request }) = decode_agent_line(&line) {
                assert!(request.len() <= MAX_REQUEST_BYTES);
                let raw = check_call_request(&request).expect("relayed request re-checks");
                let again = encode_line(&Call { call, request: raw });
                match decode_agent_line(&again[..again.len() - 1]) {
                    Ok(AgentLine::Call { call: c2, request: r2 }) => {
                        assert_eq!((c2, &r2), (call, &request));
                    }
                    other => panic!("re-decoded as {other:?}"),
                }
            }
            if let Ok(HostLine::Answer(a)) = decode_host_line(&line) {
                let again = encode_line(&a);
                let back = decode_host_line(&again[..again.len() - 1]).expect("re-decodes");
                assert_eq!(back, HostLine::Answer(a));
            }
        }
    }
});
