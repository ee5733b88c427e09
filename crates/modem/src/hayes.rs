//! The Hayes command set, sans I/O: command-line editing and parsing, S-registers,
//! result codes, and `+++` escape detection with guard time.

use std::time::{Duration, Instant};

/// Hayes result codes (numeric value = `ATV0` form).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Code {
    Ok = 0,
    Connect = 1,
    Ring = 2,
    NoCarrier = 3,
    Error = 4,
    NoDialtone = 6,
    Busy = 7,
    NoAnswer = 8,
}

impl Code {
    pub fn text(self) -> &'static str {
        match self {
            Code::Ok => "OK",
            Code::Connect => "CONNECT",
            Code::Ring => "RING",
            Code::NoCarrier => "NO CARRIER",
            Code::Error => "ERROR",
            Code::NoDialtone => "NO DIALTONE",
            Code::Busy => "BUSY",
            Code::NoAnswer => "NO ANSWER",
        }
    }

    /// Parses a verbose or numeric result line.
    pub fn parse(line: &str) -> Option<(Code, Option<u32>)> {
        let line = line.trim();
        let all = [
            Code::Ok,
            Code::Connect,
            Code::Ring,
            Code::NoCarrier,
            Code::Error,
            Code::NoDialtone,
            Code::Busy,
            Code::NoAnswer,
        ];
        if let Some(rest) = line.strip_prefix("CONNECT") {
            let speed = rest
                .split_whitespace()
                .next()
                .and_then(|s| s.split('/').next()?.parse().ok());
            return Some((Code::Connect, speed));
        }
        all.into_iter()
            .find(|c| c.text() == line || (*c as u8).to_string() == line)
            .map(|c| (c, None))
    }
}

/// What the driver must do after a command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Bytes for the DTE (echo, results, register values).
    Write(Vec<u8>),
    /// Dial this number; the driver reports CONNECT/BUSY/... with [`Hayes::result`].
    Dial(String),
    Answer,
    Hangup,
    /// Back to the call (ATO).
    Online,
    Reset,
}

const DEFAULT_S: [u8; 32] = {
    let mut s = [0u8; 32];
    s[2] = b'+';
    s[3] = b'\r';
    s[4] = b'\n';
    s[5] = 8;
    s[7] = 50;
    s[12] = 50;
    s
};

/// Command-mode state of one modem.
pub struct Hayes {
    pub echo: bool,
    pub verbose: bool,
    pub quiet: bool,
    /// `&D`: what a DTR drop does (0 nothing, 1 command mode with the call kept,
    /// 2 and 3 hang up).
    pub dtr: u8,
    pub s: [u8; 32],
    line: Vec<u8>,
}

impl Default for Hayes {
    fn default() -> Self {
        Hayes {
            echo: true,
            verbose: true,
            quiet: false,
            dtr: 2,
            s: DEFAULT_S,
            line: Vec::new(),
        }
    }
}

impl Hayes {
    /// Escape guard time (S12, in fiftieths of a second).
    pub fn guard(&self) -> Duration {
        Duration::from_millis(self.s[12] as u64 * 20)
    }

    /// Rings before auto-answer (S0; 0 = never).
    pub fn auto_answer(&self) -> u8 {
        self.s[0]
    }

    /// Formats a result code for the DTE.
    pub fn result(&self, code: Code, speed: Option<u32>) -> Vec<u8> {
        if self.quiet {
            return Vec::new();
        }
        if self.verbose {
            let text = match (code, speed) {
                (Code::Connect, Some(s)) => format!("CONNECT {s}"),
                _ => code.text().to_string(),
            };
            format!("\r\n{text}\r\n").into_bytes()
        } else {
            format!("{}\r", code as u8).into_bytes()
        }
    }

    /// Takes bytes typed in command mode.
    pub fn feed(&mut self, data: &[u8]) -> Vec<Action> {
        let mut actions = Vec::new();
        for &b in data {
            if self.echo {
                actions.push(Action::Write(vec![b]));
            }
            if b == self.s[3] {
                let line = std::mem::take(&mut self.line);
                actions.extend(self.execute(&line));
            } else if b == self.s[5] || b == 0x7f {
                self.line.pop();
            } else if b == b'\n' {
                // Line feeds after CR are ignored.
            } else if self.line.len() < 256 {
                self.line.push(b);
            }
        }
        // Merge adjacent writes so the driver writes once.
        let mut merged: Vec<Action> = Vec::new();
        for a in actions {
            match (merged.last_mut(), a) {
                (Some(Action::Write(w)), Action::Write(x)) => w.extend_from_slice(&x),
                (_, a) => merged.push(a),
            }
        }
        merged
    }

    fn execute(&mut self, line: &[u8]) -> Vec<Action> {
        let text = String::from_utf8_lossy(line).trim().to_string();
        if text.is_empty() {
            return vec![];
        }
        // Commands are ASCII; the parser below indexes the line by byte.
        if !text.is_ascii() {
            return vec![Action::Write(self.result(Code::Error, None))];
        }
        let upper = text.to_ascii_uppercase();
        let Some(cmds) = upper.strip_prefix("AT") else {
            return vec![Action::Write(self.result(Code::Error, None))];
        };
        let b = cmds.as_bytes();
        let mut out = Vec::new();
        let mut i = 0;
        let num = |i: &mut usize| -> Option<u32> {
            let start = *i;
            while *i < b.len() && b[*i].is_ascii_digit() {
                *i += 1;
            }
            cmds[start..*i].parse().ok()
        };
        while i < b.len() {
            let c = b[i];
            i += 1;
            match c {
                b' ' => {}
                b'D' => {
                    let mut n: String = cmds[i..]
                        .chars()
                        .filter(|c| {
                            !matches!(c, ' ' | '-' | '(' | ')' | ',' | ';' | 'W' | '@' | '!')
                        })
                        .collect();
                    if n.starts_with('T') || n.starts_with('P') {
                        n.remove(0);
                    }
                    // Keep the original case of host names dialled directly.
                    let orig = &text[2 + i..];
                    let orig = orig
                        .trim()
                        .trim_start_matches(['T', 'P', 't', 'p'])
                        .trim()
                        .trim_end_matches(';');
                    let number = if n.contains(':') || n.chars().any(|c| c.is_ascii_alphabetic()) {
                        orig.to_string()
                    } else {
                        n
                    };
                    out.push(Action::Dial(number));
                    return out;
                }
                b'A' => {
                    out.push(Action::Answer);
                    return out;
                }
                b'O' => {
                    num(&mut i);
                    out.push(Action::Online);
                    return out;
                }
                b'H' => {
                    if num(&mut i).unwrap_or(0) == 0 {
                        out.push(Action::Hangup);
                    }
                }
                b'Z' => {
                    num(&mut i);
                    *self = Hayes::default();
                    out.push(Action::Reset);
                }
                b'E' => self.echo = num(&mut i).unwrap_or(0) != 0,
                b'V' => self.verbose = num(&mut i).unwrap_or(0) != 0,
                b'Q' => self.quiet = num(&mut i).unwrap_or(0) != 0,
                b'X' | b'L' | b'M' | b'B' => {
                    num(&mut i);
                }
                b'I' => {
                    num(&mut i);
                    out.push(Action::Write(b"\r\nBulkhead modem model\r\n".to_vec()));
                }
                b'&' => {
                    let Some(&what) = b.get(i) else {
                        return vec![Action::Write(self.result(Code::Error, None))];
                    };
                    i += 1;
                    let n = num(&mut i);
                    if what == b'D' {
                        match n.unwrap_or(0) {
                            v @ 0..=3 => self.dtr = v as u8,
                            _ => return vec![Action::Write(self.result(Code::Error, None))],
                        }
                    }
                    if what == b'F' {
                        *self = Hayes {
                            line: Vec::new(),
                            ..Hayes::default()
                        };
                    }
                }
                b'S' => {
                    let Some(reg) = num(&mut i).filter(|r| (*r as usize) < self.s.len()) else {
                        return vec![Action::Write(self.result(Code::Error, None))];
                    };
                    match b.get(i) {
                        Some(b'=') => {
                            i += 1;
                            match num(&mut i).filter(|v| *v <= 255) {
                                Some(v) => self.s[reg as usize] = v as u8,
                                None => return vec![Action::Write(self.result(Code::Error, None))],
                            }
                        }
                        Some(b'?') => {
                            i += 1;
                            out.push(Action::Write(
                                format!("\r\n{:03}\r\n", self.s[reg as usize]).into_bytes(),
                            ));
                        }
                        _ => return vec![Action::Write(self.result(Code::Error, None))],
                    }
                }
                _ => return vec![Action::Write(self.result(Code::Error, None))],
            }
        }
        out.push(Action::Write(self.result(Code::Ok, None)));
        out
    }
}

/// Detects `+++` framed by guard time in data from the DTE while online.
#[derive(Default)]
pub struct Escape {
    last_data: Option<Instant>,
    pluses: u8,
    last_plus: Option<Instant>,
}

impl Escape {
    /// Takes data typed online; returns what to send to the line (pluses that may
    /// start an escape are held back until it is clear they do not).
    pub fn feed(&mut self, now: Instant, data: &[u8], esc: u8, guard: Duration) -> Vec<u8> {
        let mut out = Vec::with_capacity(data.len());
        for &b in data {
            let quiet_before = self
                .last_data
                .is_none_or(|t| now.duration_since(t) >= guard);
            if b == esc && (self.pluses > 0 || quiet_before) && self.pluses < 3 {
                if self.pluses > 0
                    && self
                        .last_plus
                        .is_some_and(|t| now.duration_since(t) > guard)
                {
                    out.extend(std::iter::repeat_n(esc, self.pluses as usize));
                    self.pluses = 0;
                    self.last_data = Some(now);
                    out.push(b);
                    continue;
                }
                self.pluses += 1;
                self.last_plus = Some(now);
                continue;
            }
            if self.pluses > 0 {
                out.extend(std::iter::repeat_n(esc, self.pluses as usize));
                self.pluses = 0;
            }
            out.push(b);
            self.last_data = Some(now);
        }
        out
    }

    /// When to check for a completed escape.
    pub fn deadline(&self, guard: Duration) -> Option<Instant> {
        (self.pluses == 3).then(|| self.last_plus.expect("set with pluses") + guard)
    }

    /// True when `+++` was followed by guard time: go to command mode.
    pub fn check(&mut self, now: Instant, guard: Duration) -> bool {
        if self.deadline(guard).is_some_and(|d| now >= d) {
            *self = Escape::default();
            return true;
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn writes(a: &[Action]) -> String {
        a.iter()
            .filter_map(|x| {
                if let Action::Write(w) = x {
                    Some(String::from_utf8_lossy(w).into_owned())
                } else {
                    None
                }
            })
            .collect()
    }

    #[test]
    fn echo_ok_and_registers() {
        let mut h = Hayes::default();
        let a = h.feed(b"ATE0 S0=2 S12=5\r");
        assert_eq!(writes(&a), "ATE0 S0=2 S12=5\r\r\nOK\r\n");
        assert_eq!(
            (h.auto_answer(), h.guard()),
            (2, Duration::from_millis(100))
        );
        let a = h.feed(b"ATS0?\r");
        assert_eq!(writes(&a), "\r\n002\r\n\r\nOK\r\n");
        assert_eq!(writes(&h.feed(b"ATV0\r")), "0\r");
        assert_eq!(writes(&h.feed(b"ATY\r")), "4\r");
        assert_eq!(writes(&h.feed(b"hello\r")), "4\r");
        // Found by the fuzzer: a non-ASCII byte used to panic the parser.
        assert_eq!(writes(&h.feed(b"AT&\xd8F\r")), "4\r");
        assert_eq!(writes(&h.feed(b"ATDT555\xe9\r")), "4\r");
        assert_eq!(h.result(Code::Busy, None), b"7\r");
        assert_eq!(h.dtr, 2, "DTR drop hangs up by default");
        assert_eq!(writes(&h.feed(b"AT&D0\r")), "0\r");
        assert_eq!(h.dtr, 0);
        assert_eq!(writes(&h.feed(b"AT&D9\r")), "4\r");
    }

    #[test]
    fn dial_answer_hangup_reset() {
        let mut h = Hayes {
            echo: false,
            ..Hayes::default()
        };
        assert_eq!(
            h.feed(b"ATDT 555-1234\r"),
            vec![Action::Dial("5551234".into())]
        );
        assert_eq!(
            h.feed(b"atdp127.0.0.1:7\r"),
            vec![Action::Dial("127.0.0.1:7".into())]
        );
        assert_eq!(h.feed(b"ATA\r"), vec![Action::Answer]);
        assert_eq!(h.feed(b"ATH0\r")[0], Action::Hangup);
        assert_eq!(h.feed(b"ATO\r"), vec![Action::Online]);
        let a = h.feed(b"ATZ\r");
        assert_eq!(a[0], Action::Reset);
        assert!(h.echo, "ATZ restores defaults");
    }

    #[test]
    fn backspace_edits_the_line() {
        let mut h = Hayes {
            echo: false,
            ..Hayes::default()
        };
        assert_eq!(h.feed(b"ATDX\x081\r"), vec![Action::Dial("1".into())]);
    }

    #[test]
    fn result_parsing() {
        assert_eq!(
            Code::parse("CONNECT 33600"),
            Some((Code::Connect, Some(33600)))
        );
        assert_eq!(Code::parse("CONNECT"), Some((Code::Connect, None)));
        assert_eq!(Code::parse("NO DIALTONE"), Some((Code::NoDialtone, None)));
        assert_eq!(Code::parse("7"), Some((Code::Busy, None)));
        assert_eq!(Code::parse("garbage"), None);
    }

    #[test]
    fn escape_needs_guard_time_on_both_sides() {
        let g = Duration::from_millis(100);
        let t = Instant::now();
        let mut e = Escape::default();
        assert_eq!(e.feed(t, b"data", b'+', g), b"data");
        // +++ right after data is just data.
        assert_eq!(e.feed(t, b"+++", b'+', g), b"+++");
        // After guard: held, then confirmed by silence.
        let t2 = t + g;
        assert_eq!(e.feed(t2, b"+++", b'+', g), b"");
        assert!(!e.check(t2, g));
        assert!(e.check(t2 + g, g));
        // +++ followed by data is released as data.
        let t3 = t2 + g * 3;
        let mut e = Escape::default();
        assert_eq!(e.feed(t3, b"+++", b'+', g), b"");
        assert_eq!(e.feed(t3, b"x", b'+', g), b"+++x");
        assert!(e.deadline(g).is_none());
    }
}
