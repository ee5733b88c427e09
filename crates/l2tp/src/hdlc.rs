//! Async HDLC-like framing for PPP (RFC 1662 §4): what a modem carries, turned into
//! the PPP frames an L2TP data message carries (address/control kept, FCS and byte
//! stuffing removed) and back.

const FLAG: u8 = 0x7e;
const ESC: u8 = 0x7d;

/// FCS-16 lookup table (RFC 1662 §C.2).
const FCS_TABLE: [u16; 256] = {
    let mut t = [0u16; 256];
    let mut b = 0;
    while b < 256 {
        let mut v = b as u16;
        let mut i = 0;
        while i < 8 {
            v = if v & 1 != 0 {
                (v >> 1) ^ 0x8408
            } else {
                v >> 1
            };
            i += 1;
        }
        t[b] = v;
        b += 1;
    }
    t
};

pub fn fcs16(data: &[u8]) -> u16 {
    let mut fcs = 0xffffu16;
    for &b in data {
        fcs = (fcs >> 8) ^ FCS_TABLE[((fcs ^ b as u16) & 0xff) as usize];
    }
    fcs
}

/// Appends `frame` as an async HDLC frame: flag, stuffed frame + FCS, flag.
/// `accm` is the async control character map (bit n set = escape byte n).
pub fn encode(frame: &[u8], accm: u32, out: &mut Vec<u8>) {
    let fcs = !fcs16(frame);
    out.reserve(frame.len() + frame.len() / 8 + 6);
    out.push(FLAG);
    let mut put = |b: u8| {
        if b == FLAG || b == ESC || (b < 0x20 && accm & (1 << b) != 0) {
            out.push(ESC);
            out.push(b ^ 0x20);
        } else {
            out.push(b);
        }
    };
    for &b in frame {
        put(b);
    }
    put((fcs & 0xff) as u8);
    put((fcs >> 8) as u8);
    out.push(FLAG);
}

/// Incremental decoder: feed modem bytes, take PPP frames with good FCS.
#[derive(Default)]
pub struct Decoder {
    buf: Vec<u8>,
    escaped: bool,
    /// Frames dropped for a bad FCS or being too short.
    pub bad_frames: u64,
}

const MAX_FRAME: usize = 8192;

impl Decoder {
    /// Feeds bytes; calls `frame` with each complete frame (without FCS).
    pub fn feed(&mut self, data: &[u8], mut frame: impl FnMut(&[u8])) {
        for &b in data {
            match b {
                FLAG => {
                    if self.buf.len() >= 4 && fcs16(&self.buf) == 0xf0b8 {
                        let n = self.buf.len() - 2;
                        frame(&self.buf[..n]);
                    } else if !self.buf.is_empty() {
                        self.bad_frames += 1;
                    }
                    self.buf.clear();
                    self.escaped = false;
                }
                ESC => self.escaped = true,
                _ => {
                    if self.buf.len() >= MAX_FRAME {
                        // Runaway frame without flags: drop it.
                        self.buf.clear();
                        self.bad_frames += 1;
                    }
                    self.buf.push(if self.escaped { b ^ 0x20 } else { b });
                    self.escaped = false;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fcs_check_value() {
        // RFC 1662 §C.2: FCS over data plus its complemented FCS gives the good value.
        let data = b"123456789";
        let mut with = data.to_vec();
        let f = !fcs16(data);
        with.extend_from_slice(&f.to_le_bytes());
        assert_eq!(fcs16(&with), 0xf0b8);
        assert_eq!(f, 0x906e); // CRC-16/X-25 of "123456789"
    }

    #[test]
    fn round_trip_with_escapes() {
        let frames: Vec<Vec<u8>> = vec![
            vec![0xff, 0x03, 0xc0, 0x21, 0x01, 0x01, 0x00, 0x04],
            vec![0xff, 0x03, 0x7e, 0x7d, 0x00, 0x1f, 0x20, 0xff],
        ];
        let mut wire = Vec::new();
        for f in &frames {
            encode(f, 0xffff_ffff, &mut wire);
        }
        assert!(!wire[1..wire.len() - 1]
            .iter()
            .any(|&b| b < 0x20 && b != 0x7e));
        let mut d = Decoder::default();
        let mut got = Vec::new();
        // Feed a byte at a time: frames split anywhere must come out whole.
        for b in &wire {
            d.feed(std::slice::from_ref(b), |f| got.push(f.to_vec()));
        }
        assert_eq!(got, frames);
        assert_eq!(d.bad_frames, 0);
    }

    #[test]
    fn bad_fcs_is_dropped() {
        let mut wire = Vec::new();
        encode(b"\xff\x03hello", 0, &mut wire);
        wire[4] ^= 1;
        let mut d = Decoder::default();
        let mut n = 0;
        d.feed(&wire, |_| n += 1);
        assert_eq!((n, d.bad_frames), (0, 1));
    }
}
