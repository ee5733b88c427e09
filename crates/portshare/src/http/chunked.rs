//! Strict chunked framing (RFC 9112 §7.1): finds where a chunked body ends
//! without decoding it. Only canonical framing passes (CRLF line endings, a
//! bounded hex size, well-formed extensions, trailers that are fields), so the
//! bytes forwarded unchanged read the same to any conforming parser downstream.

use super::HeadError;

/// Sans-I/O chunked-body delimiter.
#[derive(Debug, Clone, Default)]
pub struct Chunked {
    state: ChunkState,
    size: u64,
    digits: u8,
    /// Bytes of the current extension run or of the trailer section.
    line: usize,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
enum ChunkState {
    #[default]
    Size,
    /// Whitespace after the size: only `;` may follow.
    SizeWs,
    Ext,
    SizeLf,
    Data,
    DataCr,
    DataLf,
    TrailerStart,
    TrailerName,
    TrailerValue,
    TrailerLf,
    FinalLf,
    Done,
}

/// Largest chunk accepted (2^52, as HAProxy): a size near 2^64 would let a
/// body stream without end, and parsers disagree on overflow.
pub const MAX_CHUNK_SIZE: u64 = 1 << 52;
/// Most hex digits in a chunk size, leading zeros included.
const MAX_SIZE_DIGITS: u8 = 16;
/// Longest chunk-extension run, and the longest trailer section.
const MAX_CHUNK_LINE: usize = 8192;

/// RFC 9110 tchar: what a field name (and an extension name) is made of.
pub(crate) fn is_tchar(c: u8) -> bool {
    c.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&c)
}

/// Visible ASCII, space, tab: what an extension or a trailer value may hold.
fn is_text(c: u8) -> bool {
    matches!(c, b'\t' | b' '..=b'~')
}

fn bad(what: &'static str) -> HeadError {
    HeadError::Chunked(what)
}

impl Chunked {
    pub fn is_done(&self) -> bool {
        self.state == ChunkState::Done
    }

    /// Consumes body bytes from `buf`; returns how many belong to the body
    /// (all of `buf` unless the body ends inside it). On error nothing of
    /// `buf` may be forwarded.
    pub fn feed(&mut self, buf: &[u8]) -> Result<usize, HeadError> {
        use ChunkState::*;
        let mut i = 0;
        while i < buf.len() && self.state != Done {
            if self.state == Data {
                let n = (self.size.min((buf.len() - i) as u64)) as usize;
                self.size -= n as u64;
                i += n;
                if self.size == 0 {
                    self.state = DataCr;
                }
                continue;
            }
            let c = buf[i];
            i += 1;
            self.state = match (self.state, c) {
                (Size, _) if c.is_ascii_hexdigit() => {
                    if self.digits == MAX_SIZE_DIGITS {
                        return Err(bad("chunk size too long"));
                    }
                    self.digits += 1;
                    self.size = self.size << 4 | (c as char).to_digit(16).unwrap_or(0) as u64;
                    if self.size > MAX_CHUNK_SIZE {
                        return Err(bad("chunk size too large"));
                    }
                    Size
                }
                (Size, _) if self.digits == 0 => return Err(bad("missing chunk size")),
                (Size | SizeWs, b' ' | b'\t') => SizeWs,
                (Size | SizeWs, b';') => {
                    self.line = 0;
                    Ext
                }
                (Size, b'\r') => SizeLf,
                (Ext, b'\r') => SizeLf,
                (Ext, _) if is_text(c) => {
                    self.line += 1;
                    if self.line > MAX_CHUNK_LINE {
                        return Err(bad("chunk extension too long"));
                    }
                    Ext
                }
                (SizeLf, b'\n') if self.size == 0 => {
                    self.line = 0;
                    TrailerStart
                }
                (SizeLf, b'\n') => Data,
                (DataCr, b'\r') => DataLf,
                (DataLf, b'\n') => {
                    self.digits = 0;
                    Size
                }
                (TrailerStart, b'\r') => FinalLf,
                (TrailerStart | TrailerName, _) if is_tchar(c) => self.trailer(TrailerName)?,
                (TrailerName, b':') => self.trailer(TrailerValue)?,
                (TrailerValue, b'\r') => TrailerLf,
                (TrailerValue, _) if is_text(c) => self.trailer(TrailerValue)?,
                (TrailerLf, b'\n') => TrailerStart,
                (FinalLf, b'\n') => Done,
                (Size | SizeWs, _) => return Err(bad("bad chunk size")),
                (SizeLf | DataLf | TrailerLf | FinalLf, _) => return Err(bad("bare CR")),
                (Ext | TrailerValue, b'\n') => return Err(bad("bare LF")),
                (DataCr, _) => return Err(bad("chunk data longer than its size")),
                (TrailerStart | TrailerName, _) => return Err(bad("trailer is not a field")),
                (Ext | TrailerValue, _) => return Err(bad("control byte")),
                (Data | Done, _) => unreachable!("handled above"),
            };
        }
        Ok(i)
    }

    fn trailer(&mut self, next: ChunkState) -> Result<ChunkState, HeadError> {
        self.line += 1;
        if self.line > MAX_CHUNK_LINE {
            return Err(bad("trailer section too long"));
        }
        Ok(next)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn whole(b: &[u8]) -> Result<usize, HeadError> {
        let mut c = Chunked::default();
        let n = c.feed(b)?;
        assert!(c.is_done(), "{:?}", String::from_utf8_lossy(b));
        Ok(n)
    }

    #[test]
    fn ends_where_it_should() {
        let body = b"5;ext=1\r\nhello\r\n0\r\nTrailer: x\r\n\r\nNEXT";
        assert_eq!(whole(body).unwrap(), body.len() - 4);
        // Byte by byte gives the same answer.
        let mut c = Chunked::default();
        let mut n = 0;
        for b in body.iter() {
            n += c.feed(std::slice::from_ref(b)).unwrap();
            if c.is_done() {
                break;
            }
        }
        assert_eq!(n, body.len() - 4);
        assert_eq!(
            whole(b"A ; a=\"b c\"\r\n0123456789\r\n0\r\n\r\n").unwrap(),
            30
        );
    }

    #[test]
    fn refuses_what_is_not_canonical() {
        let err = |b: &[u8]| Chunked::default().feed(b).unwrap_err();
        assert_eq!(err(b"zz\r\n"), bad("missing chunk size"));
        // Sizes past 2^52, and 2^64-1, which streams without end.
        assert_eq!(err(b"20000000000001\r\n"), bad("chunk size too large"));
        assert_eq!(err(b"ffffffffffffffff\r\n"), bad("chunk size too large"));
        assert_eq!(err(b"00000000000000001\r\n"), bad("chunk size too long"));
        // Bare LF after the size, in an extension, after data, in trailers.
        assert_eq!(err(b"5\nhello\r\n"), bad("bad chunk size"));
        assert_eq!(err(b"5;x\nhello\r\n"), bad("bare LF"));
        assert_eq!(err(b"5\r\nhello\n"), bad("chunk data longer than its size"));
        assert_eq!(err(b"5\r\nhello\r\r"), bad("bare CR"));
        assert_eq!(err(b"0\r\nT: 1\n\r\n"), bad("bare LF"));
        assert_eq!(err(b"0\r\n\n"), bad("trailer is not a field"));
        // Trailer lines that are not fields, obs-fold in trailers.
        assert_eq!(
            err(b"0\r\nGET / HTTP/1.1\r\n\r\n"),
            bad("trailer is not a field")
        );
        assert_eq!(
            err(b"0\r\nA: 1\r\n folded\r\n\r\n"),
            bad("trailer is not a field")
        );
        // Whitespace after the size that no extension follows; control bytes.
        assert_eq!(err(b"5 \r\nhello\r\n"), bad("bad chunk size"));
        assert_eq!(err(b"5;\x00\r\n"), bad("control byte"));
        assert_eq!(err(b"1\r\nab"), bad("chunk data longer than its size"));
        assert_eq!(
            err(&[b"1;".as_slice(), &[b'x'; 9000]].concat()),
            bad("chunk extension too long")
        );
    }
}
