//! The incremental frame decoder: bytes in, frames out. It takes from its input only
//! what the current frame still needs, so it never holds more than one frame
//! (`HEADER_LEN + MAX_FRAME_LEN` bytes); the caller keeps the rest of its buffer.

use crate::frame::{Frame, FrameType, HEADER_LEN, MAX_FRAME_LEN};

/// Every way bytes from a peer can be wrong, each its own variant.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("frame of {len} bytes exceeds the limit of {max}")]
    FrameTooLarge { len: usize, max: usize },
    #[error("empty frame (length 0)")]
    EmptyFrame,
    #[error("unknown frame type 0x{0:02x}")]
    UnknownFrameType(u8),
    #[error("{frame} frame truncated at {field}")]
    Truncated {
        frame: FrameType,
        field: &'static str,
    },
    #[error("{frame} frame has {extra} bytes after its last field")]
    TrailingBytes { frame: FrameType, extra: usize },
    #[error("{field} is {len} bytes, limit {max}")]
    FieldTooLong {
        field: &'static str,
        len: usize,
        max: usize,
    },
    #[error("{field} is empty")]
    FieldEmpty { field: &'static str },
    #[error("{field} has characters outside its set")]
    BadChars { field: &'static str },
    #[error("{field} is not UTF-8")]
    BadUtf8 { field: &'static str },
    #[error("HELLO without the protocol magic")]
    BadMagic,
    #[error("HELLO version range {min}..={max} is empty")]
    BadVersionRange { min: u16, max: u16 },
    #[error("DEALLOCATE flags 0x{flags:02x} unknown")]
    BadFlags { flags: u8 },
    #[error("session id 0")]
    ZeroSession,
    #[error("wait of {ms} ms exceeds the limit of {max} ms")]
    WaitTooLong { ms: u32, max: u32 },
}

impl DecodeError {
    /// Whether the peer sent more than the bound (REFUSED too-large) rather than
    /// something ill-formed (REFUSED malformed).
    pub fn is_too_large(&self) -> bool {
        matches!(self, Self::FrameTooLarge { .. })
    }
}

/// Streaming decoder. After an error it keeps returning that error: the stream's
/// framing can no longer be trusted.
#[derive(Debug, Default)]
pub struct Decoder {
    header: [u8; HEADER_LEN],
    header_len: usize,
    /// Body of the current frame once its length is known; capacity is that length.
    body: Vec<u8>,
    body_len: Option<usize>,
    failed: Option<DecodeError>,
}

impl Decoder {
    pub fn new() -> Self {
        Self::default()
    }

    /// Bytes of a partial frame held (header and body).
    pub fn buffered(&self) -> usize {
        self.header_len + self.body.len()
    }

    /// Consumes from the front of `input` up to the end of one frame. Returns
    /// `Ok(Some(frame))` when one is complete, `Ok(None)` when `input` ran out first
    /// (what was taken is kept for the next call).
    pub fn decode(&mut self, input: &mut &[u8]) -> Result<Option<Frame>, DecodeError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        let r = self.step(input);
        if let Err(e) = &r {
            self.failed = Some(e.clone());
        }
        r
    }

    fn step(&mut self, input: &mut &[u8]) -> Result<Option<Frame>, DecodeError> {
        let len = match self.body_len {
            Some(len) => len,
            None => {
                let n = (HEADER_LEN - self.header_len).min(input.len());
                self.header[self.header_len..self.header_len + n].copy_from_slice(&input[..n]);
                self.header_len += n;
                *input = &input[n..];
                if self.header_len < HEADER_LEN {
                    return Ok(None);
                }
                let len = u32::from_be_bytes(self.header) as usize;
                // Judged on the header alone, before any of the body is buffered.
                if len > MAX_FRAME_LEN {
                    return Err(DecodeError::FrameTooLarge {
                        len,
                        max: MAX_FRAME_LEN,
                    });
                }
                if len == 0 {
                    return Err(DecodeError::EmptyFrame);
                }
                self.body = Vec::with_capacity(len);
                self.body_len = Some(len);
                len
            }
        };
        let n = (len - self.body.len()).min(input.len());
        self.body.extend_from_slice(&input[..n]);
        *input = &input[n..];
        if self.body.len() < len {
            return Ok(None);
        }
        let body = std::mem::take(&mut self.body);
        self.header_len = 0;
        self.body_len = None;
        Frame::parse(&body).map(Some)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::{Allocate, MAX_WAIT_MS};

    fn decode_all(mut bytes: &[u8]) -> Result<Vec<Frame>, DecodeError> {
        let mut d = Decoder::new();
        let mut out = Vec::new();
        while !bytes.is_empty() {
            if let Some(f) = d.decode(&mut bytes)? {
                out.push(f);
            }
        }
        assert_eq!(d.buffered(), 0, "a partial frame left over");
        Ok(out)
    }

    fn raw(ty: u8, payload: &[u8]) -> Vec<u8> {
        let mut v = ((payload.len() + 1) as u32).to_be_bytes().to_vec();
        v.push(ty);
        v.extend_from_slice(payload);
        v
    }

    #[test]
    fn byte_by_byte_equals_whole() {
        let frames = vec![
            Frame::Hello {
                min_version: 1,
                max_version: 3,
            },
            Frame::Data(b"hello".to_vec()),
            Frame::Deallocate { confirm: true },
        ];
        let mut bytes = Vec::new();
        for f in &frames {
            f.encode(&mut bytes).unwrap();
        }
        let mut d = Decoder::new();
        let mut got = Vec::new();
        for b in &bytes {
            let mut one: &[u8] = std::slice::from_ref(b);
            if let Some(f) = d.decode(&mut one).unwrap() {
                got.push(f);
            }
            assert!(one.is_empty());
        }
        assert_eq!(got, frames);
    }

    #[test]
    fn oversized_length_refused_from_header_alone() {
        let mut input: &[u8] = &((MAX_FRAME_LEN + 1) as u32).to_be_bytes();
        let mut d = Decoder::new();
        assert!(matches!(
            d.decode(&mut input),
            Err(DecodeError::FrameTooLarge { len, .. }) if len == MAX_FRAME_LEN + 1
        ));
        assert_eq!(d.buffered(), HEADER_LEN);
        // Sticky: the framing is lost.
        let mut more: &[u8] = &raw(0x31, &[]);
        assert!(d.decode(&mut more).unwrap_err().is_too_large());
    }

    #[test]
    fn max_sized_data_accepted() {
        let f = Frame::Data(vec![7; crate::MAX_DATA_LEN]);
        assert_eq!(decode_all(&f.to_bytes().unwrap()).unwrap(), vec![f]);
        assert!(Frame::Data(vec![7; crate::MAX_DATA_LEN + 1])
            .to_bytes()
            .is_err());
    }

    #[test]
    fn each_malformation_has_its_own_error() {
        use DecodeError as E;
        let alloc = |p: &[u8], u: &[u8], c: &[u8], w: u32| {
            let mut v = vec![p.len() as u8];
            v.extend_from_slice(p);
            v.push(u.len() as u8);
            v.extend_from_slice(u);
            v.push(c.len() as u8);
            v.extend_from_slice(c);
            v.extend_from_slice(&w.to_be_bytes());
            raw(0x10, &v)
        };
        let cases: Vec<(Vec<u8>, E)> = vec![
            (0u32.to_be_bytes().to_vec(), E::EmptyFrame),
            (raw(0x77, &[]), E::UnknownFrameType(0x77)),
            (
                raw(0x01, b"BHPL\0\x01"),
                E::Truncated {
                    frame: FrameType::Hello,
                    field: "max_version",
                },
            ),
            (raw(0x01, b"XXXX\0\x01\0\x01"), E::BadMagic),
            (
                raw(0x01, b"BHPL\0\x02\0\x01"),
                E::BadVersionRange { min: 2, max: 1 },
            ),
            (
                raw(0x31, b"x"),
                E::TrailingBytes {
                    frame: FrameType::Confirmed,
                    extra: 1,
                },
            ),
            (alloc(b"", b"u", b"", 0), E::FieldEmpty { field: "program" }),
            (
                alloc(&[b'a'; 65], b"u", b"", 0),
                E::FieldTooLong {
                    field: "program",
                    len: 65,
                    max: 64,
                },
            ),
            (alloc(b"p", b"a b", b"", 0), E::BadChars { field: "user" }),
            (alloc(b"p", b"\xff", b"", 0), E::BadUtf8 { field: "user" }),
            (
                alloc(b"p", b"u", b"tok en", 0),
                E::BadChars {
                    field: "credential",
                },
            ),
            (
                alloc(b"p", b"u", b"t", MAX_WAIT_MS + 1),
                E::WaitTooLong {
                    ms: MAX_WAIT_MS + 1,
                    max: MAX_WAIT_MS,
                },
            ),
            (raw(0x11, &[0; 8]), E::ZeroSession),
            (raw(0x30, &[2]), E::BadFlags { flags: 2 }),
            (
                raw(0x12, &[5, 0x02, 0x01]),
                E::FieldTooLong {
                    field: "message",
                    len: 513,
                    max: 512,
                },
            ),
        ];
        for (bytes, want) in cases {
            assert_eq!(decode_all(&bytes), Err(want.clone()), "{want}");
        }
    }

    #[test]
    fn allocate_round_trips() {
        let f = Frame::Allocate(Allocate {
            program: "echo".into(),
            user: "alice@example.org".into(),
            credential: "bhp_abc".into(),
            wait_ms: 1500,
        });
        assert_eq!(decode_all(&f.to_bytes().unwrap()).unwrap(), vec![f]);
    }
}
