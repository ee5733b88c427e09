//! The corpus: canonical streams every proxy must deliver whole, and
//! malformed or ambiguous ones. `allowed` lists every request any reading of
//! the bytes could yield, each with the domain it names: a proxy may deliver
//! those (to that domain's backend) or refuse, nothing else.

pub struct Case {
    pub name: &'static str,
    pub bytes: Vec<u8>,
    pub allowed: Vec<(&'static str, &'static str)>,
    /// Canonical: every allowed request must be delivered, none refused.
    pub must: bool,
    /// Bytes sent after an upgrade request that the backend must see in the tunnel.
    pub tunnel: Option<&'static [u8]>,
}

const A: &str = "a.test";
const B: &str = "b.test";

fn case(name: &'static str, bytes: &[u8], allowed: &[(&'static str, &'static str)]) -> Case {
    Case {
        name,
        bytes: bytes.to_vec(),
        allowed: allowed.to_vec(),
        must: false,
        tunnel: None,
    }
}

fn must(name: &'static str, bytes: &[u8], allowed: &[(&'static str, &'static str)]) -> Case {
    Case {
        must: true,
        ..case(name, bytes, allowed)
    }
}

/// A chunked POST /c to a.test with `body` as its raw body, then a request
/// for b.test that a lenient reading finds hidden in (or after) that body.
fn chunked(name: &'static str, te: &str, body: &[u8]) -> Case {
    let mut b = format!("POST /c HTTP/1.1\r\nHost: a.test\r\n{te}\r\n\r\n").into_bytes();
    b.extend_from_slice(body);
    b.extend_from_slice(b"GET /inner HTTP/1.1\r\nHost: b.test\r\nConnection: close\r\n\r\n");
    case(name, &b, &[(A, "/c"), (B, "/inner")])
}

pub fn all() -> Vec<Case> {
    let te = "Transfer-Encoding: chunked";
    vec![
        // Canonical: pipelining across domains after bodies of every framing.
        must("pipelined-two-domains", b"GET /g1 HTTP/1.1\r\nHost: a.test\r\n\r\nGET /g2 HTTP/1.1\r\nHost: b.test\r\nConnection: close\r\n\r\n", &[(A, "/g1"), (B, "/g2")]),
        must("pipelined-after-length-body", b"POST /p1 HTTP/1.1\r\nHost: a.test\r\nContent-Length: 5\r\n\r\nhelloGET /p2 HTTP/1.1\r\nHost: b.test\r\nConnection: close\r\n\r\n", &[(A, "/p1"), (B, "/p2")]),
        must("pipelined-after-chunked-body", b"POST /c1 HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: chunked\r\n\r\n5;x=y\r\nhello\r\n6\r\n world\r\n0\r\nT: 1\r\n\r\nGET /c2 HTTP/1.1\r\nHost: b.test\r\nConnection: close\r\n\r\n", &[(A, "/c1"), (B, "/c2")]),
        must("pipelined-after-zero-length", b"POST /z1 HTTP/1.1\r\nHost: a.test\r\nContent-Length: 0\r\n\r\nGET /z2 HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n", &[(A, "/z1"), (A, "/z2")]),
        must("pipelined-after-get-with-body", b"GET /gb1 HTTP/1.1\r\nHost: b.test\r\nContent-Length: 3\r\n\r\nabcGET /gb2 HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n", &[(B, "/gb1"), (A, "/gb2")]),
        must("head-response-has-no-body", b"HEAD /h1 HTTP/1.1\r\nHost: a.test\r\n\r\nGET /h2 HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n", &[(A, "/h1"), (A, "/h2")]),
        must("204-response-has-no-body", b"GET /204 HTTP/1.1\r\nHost: b.test\r\n\r\nGET /n2 HTTP/1.1\r\nHost: b.test\r\nConnection: close\r\n\r\n", &[(B, "/204"), (B, "/n2")]),
        must("empty-line-between-requests", b"POST /e1 HTTP/1.1\r\nHost: a.test\r\nContent-Length: 3\r\n\r\nabc\r\nGET /e2 HTTP/1.1\r\nHost: b.test\r\nConnection: close\r\n\r\n", &[(A, "/e1"), (B, "/e2")]),
        must("empty-line-before-absolute-form", b"\r\nGET http://b.test/lead HTTP/1.1\r\nHost: b.test\r\nConnection: close\r\n\r\n", &[(B, "/lead")]),
        must("http10-with-host", b"GET /old HTTP/1.0\r\nHost: b.test\r\n\r\n", &[(B, "/old")]),
        must("host-case-and-port", b"GET /hc HTTP/1.1\r\nHost: A.Test:80\r\nConnection: close\r\n\r\n", &[(A, "/hc")]),
        must("absolute-form-same-host", b"GET http://a.test/abs HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n", &[(A, "/abs")]),
        must("expect-100-continue", b"POST /e HTTP/1.1\r\nHost: a.test\r\nContent-Length: 4\r\nExpect: 100-continue\r\nConnection: close\r\n\r\nabcd", &[(A, "/e")]),
        Case {
            tunnel: Some(b"early"),
            ..case("upgrade-with-early-bytes", b"GET /up HTTP/1.1\r\nHost: a.test\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\nearly", &[(A, "/up")])
        },
        // Chunked framing that parsers read differently.
        chunked("chunk-size-bare-lf", te, b"1\nZ\r\n0\r\n\r\n"),
        chunked("chunk-ext-bare-lf", te, b"1;ext\nZ\r\n0\r\n\r\n"),
        chunked("chunk-data-bare-lf", te, b"1\r\nZ\n0\r\n\r\n"),
        chunked("last-chunk-bare-lf", te, b"1\r\nZ\r\n0\n\r\n"),
        chunked("chunk-size-2^64-1", te, b"ffffffffffffffff\r\nZ\r\n0\r\n\r\n"),
        chunked("chunk-size-overflows", te, b"10000000000000001\r\nZ\r\n0\r\n\r\n"),
        chunked("chunk-size-negative", te, b"-1\r\nZ\r\n0\r\n\r\n"),
        chunked("chunk-size-0x-prefix", te, b"0x1\r\nZ\r\n0\r\n\r\n"),
        chunked("chunk-size-space-no-ext", te, b"1 \r\nZ\r\n0\r\n\r\n"),
        chunked("chunk-ext-nul", te, b"1;a\x00b\r\nZ\r\n0\r\n\r\n"),
        chunked("trailer-not-a-field", te, b"1\r\nZ\r\n0\r\nGET /t HTTP/1.1\r\n\r\n"),
        chunked("trailer-obs-fold", te, b"1\r\nZ\r\n0\r\nT: 1\r\n folded\r\n\r\n"),
        chunked("trailer-bare-lf", te, b"1\r\nZ\r\n0\r\nT: 1\n\r\n"),
        chunked("te-chunked-chunked", "Transfer-Encoding: chunked, chunked", b"1\r\nZ\r\n0\r\n\r\n"),
        chunked("te-two-chunked-fields", "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked", b"1\r\nZ\r\n0\r\n\r\n"),
        chunked("te-chunked-not-last", "Transfer-Encoding: chunked, identity", b"1\r\nZ\r\n0\r\n\r\n"),
        chunked("te-gzip-chunked", "Transfer-Encoding: gzip, chunked", b"1\r\nZ\r\n0\r\n\r\n"),
        chunked("te-xchunked", "Transfer-Encoding: xchunked", b"1\r\nZ\r\n0\r\n\r\n"),
        chunked("te-space-before-colon", "Transfer-Encoding : chunked", b"1\r\nZ\r\n0\r\n\r\n"),
        chunked("te-obs-fold", "Transfer-Encoding:\r\n chunked", b"1\r\nZ\r\n0\r\n\r\n"),
        chunked("te-with-vertical-tab", "Transfer-Encoding:\x0bchunked", b"1\r\nZ\r\n0\r\n\r\n"),
        chunked("te-and-cl", "Transfer-Encoding: chunked\r\nContent-Length: 4", b"1\r\nZ\r\n0\r\n\r\n"),
        chunked("cl-and-te", "Content-Length: 6\r\nTransfer-Encoding: chunked", b"0\r\n\r\n"),
        chunked("te-and-cl-zero", "Transfer-Encoding: chunked\r\nContent-Length: 0", b"0\r\n\r\n"),
        case("te-http10", b"POST /c HTTP/1.0\r\nHost: a.test\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /inner HTTP/1.1\r\nHost: b.test\r\nConnection: close\r\n\r\n", &[(A, "/c"), (B, "/inner")]),
        // Content-Length that is not one plain number.
        case("cl-duplicate-equal", b"POST /c HTTP/1.1\r\nHost: a.test\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhelloGET /n HTTP/1.1\r\nHost: b.test\r\nConnection: close\r\n\r\n", &[(A, "/c"), (B, "/n")]),
        case("cl-duplicate-different", b"POST /c HTTP/1.1\r\nHost: a.test\r\nContent-Length: 5\r\nContent-Length: 0\r\n\r\nGET /inner HTTP/1.1\r\nHost: b.test\r\n\r\n", &[(A, "/c"), (B, "/inner")]),
        case("cl-list", b"POST /c HTTP/1.1\r\nHost: a.test\r\nContent-Length: 5, 5\r\n\r\nhelloGET /n HTTP/1.1\r\nHost: b.test\r\nConnection: close\r\n\r\n", &[(A, "/c"), (B, "/n")]),
        case("cl-plus-sign", b"POST /c HTTP/1.1\r\nHost: a.test\r\nContent-Length: +5\r\n\r\nhello", &[(A, "/c")]),
        case("cl-space-before-colon", b"POST /c HTTP/1.1\r\nHost: a.test\r\nContent-Length : 5\r\n\r\nhello", &[(A, "/c")]),
        // Heads that are not canonical.
        case("head-bare-lf", b"GET /lf HTTP/1.1\nHost: b.test\n\n", &[(B, "/lf")]),
        case("head-one-bare-lf", b"GET /lf HTTP/1.1\r\nHost: b.test\nX: 1\r\n\r\n", &[(B, "/lf")]),
        case("head-ends-bare-lf", b"GET /lf HTTP/1.1\r\nHost: b.test\r\n\nGET /inner HTTP/1.1\r\nHost: a.test\r\n\r\n", &[(B, "/lf"), (A, "/inner")]),
        case("head-bare-cr", b"GET /cr HTTP/1.1\r\nHost: b.test\r\nX: 1\rY: 2\r\n\r\n", &[(B, "/cr")]),
        case("head-obs-fold", b"GET /of HTTP/1.1\r\nHost: b.test\r\nX: 1\r\n 2\r\n\r\n", &[(B, "/of")]),
        case("head-obs-fold-host", b"GET /of HTTP/1.1\r\nX: 1\r\n Host: a.test\r\nHost: b.test\r\n\r\n", &[(B, "/of")]),
        case("head-nul", b"GET /nul HTTP/1.1\r\nHost: b.test\r\nX: a\x00b\r\n\r\n", &[(B, "/nul")]),
        case("head-control-byte", b"GET /ctl HTTP/1.1\r\nHost: b.test\r\nX: a\x01b\r\n\r\n", &[(B, "/ctl")]),
        case("target-control-byte", b"GET /t\x01 HTTP/1.1\r\nHost: b.test\r\n\r\n", &[]),
        case("request-line-two-spaces", b"GET  /sp HTTP/1.1\r\nHost: b.test\r\n\r\n", &[(B, "/sp")]),
        // Host and absolute-form.
        case("host-empty", b"GET /he HTTP/1.1\r\nHost:\r\n\r\n", &[]),
        case("host-duplicate", b"GET /hd HTTP/1.1\r\nHost: a.test\r\nHost: b.test\r\n\r\n", &[(A, "/hd"), (B, "/hd")]),
        case("host-missing", b"GET /hm HTTP/1.1\r\n\r\n", &[]),
        case("absolute-form-other-host", b"GET http://b.test/abs1 HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n", &[(B, "/abs1")]),
        case("absolute-form-upper-scheme", b"GET HTTP://B.TEST/abs2 HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n", &[(B, "/abs2")]),
        case("absolute-form-no-host", b"GET http://b.test/abs3 HTTP/1.1\r\nConnection: close\r\n\r\n", &[(B, "/abs3")]),
        case("absolute-form-userinfo", b"GET http://a.test@b.test/abs4 HTTP/1.1\r\nHost: b.test\r\nConnection: close\r\n\r\n", &[(B, "/abs4")]),
        case("absolute-form-port", b"GET http://b.test:80/abs5 HTTP/1.1\r\nHost: b.test:80\r\nConnection: close\r\n\r\n", &[(B, "/abs5")]),
        // Nothing after a request that closes the connection is served.
        must("close-then-more", b"GET /cl1 HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\nGET /cl2 HTTP/1.1\r\nHost: b.test\r\n\r\n", &[(A, "/cl1")]),
    ]
}
