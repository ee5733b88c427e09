//! The shared port driven by bulkheadd (issue 15) through a real daemon and
//! real TCG partitions: busybox httpd on port 8080 in each, reached by Host
//! on the daemon's shared listener; SNI routing of a ClientHello (the bytes
//! reach a guest `nc`, which answers after reading all of them; real
//! handshakes with a TLS server per partition are tests/expose_tls.rs); keep-alive across two domains; a 302 naming the
//! virtual port mapped back; stop → 502, start → served with the same
//! route; destroy → 421; route changes under load drop nothing; a
//! hibernated partition resumed by a request.

mod common;

use common::{free_tcp_port, Daemon, Opts, BOOT};
use serde_json::{json, Value};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

struct Response {
    status: u16,
    head: String,
    body: String,
}

/// One request on `s` (kept alive unless `close`); reads one response,
/// framed by Content-Length, or to EOF without one.
async fn request(
    s: &mut TcpStream,
    host: &str,
    path: &str,
    close: bool,
) -> std::io::Result<Response> {
    let conn = if close { "close" } else { "keep-alive" };
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: {conn}\r\n\r\n").as_bytes(),
    )
    .await?;
    let mut buf = Vec::new();
    let end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let mut chunk = [0u8; 4096];
        let n = s.read(&mut chunk).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..end]).to_string();
    let status = head[9..12].parse().unwrap();
    let len = head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.eq_ignore_ascii_case("content-length")
            .then(|| v.trim().parse::<usize>().unwrap())
    });
    let mut body = buf[end..].to_vec();
    match len {
        Some(n) => {
            while body.len() < n {
                let mut chunk = [0u8; 4096];
                let k = s.read(&mut chunk).await?;
                if k == 0 {
                    return Err(std::io::ErrorKind::UnexpectedEof.into());
                }
                body.extend_from_slice(&chunk[..k]);
            }
        }
        None => {
            s.read_to_end(&mut body).await?;
        }
    }
    Ok(Response {
        status,
        head,
        body: String::from_utf8_lossy(&body).to_string(),
    })
}

async fn get(port: u16, host: &str, path: &str) -> Response {
    let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    tokio::time::timeout(BOOT, request(&mut s, host, path, true))
        .await
        .expect("a response in time")
        .unwrap_or_else(|e| panic!("GET {host}{path}: {e}"))
}

/// Polls (bounded) until `host` answers `status`.
async fn until_status(port: u16, host: &str, status: u16) -> Response {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let r = get(port, host, "/").await;
        if r.status == status {
            return r;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{host} never answered {status}; last {} {}",
            r.status,
            r.body
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn ok(v: &Value) -> String {
    assert_eq!(v["code"], 0, "{v:#}");
    v["stdout"].as_str().unwrap().trim().to_string()
}

/// httpd on 8080 with an index naming the partition and a CGI 302 naming
/// the virtual port; on 8081 a keep-alive responder in sh (busybox httpd
/// closes after each response, and the proxy keeps a client connection only
/// while its target does); on 8443 a one-shot `nc` that reads `hello_len`
/// bytes and answers `sni-<name>`.
async fn serve(d: &Daemon, name: &str, hello_len: usize) {
    let script = format!(
        r#"mkdir -p /www/cgi-bin && echo body-of-{name} > /www/index.html
cat > /www/cgi-bin/r <<'X'
#!/bin/sh
printf 'Status: 302 Found\r\nLocation: http://{name}.example.org:8080/next\r\n\r\n'
X
cat > /tmp/ka.sh <<'X'
#!/bin/sh
cr=$(printf '\r')
while read -r l; do
  if [ "$l" = "$cr" ] || [ -z "$l" ]; then printf 'HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nka-{name}'; fi
done
X
cat > /tmp/sni.sh <<'X'
#!/bin/sh
head -c {hello_len} >/dev/null
echo sni-{name}
X
chmod +x /www/cgi-bin/r /tmp/ka.sh /tmp/sni.sh
httpd -p 8080 -h /www
(while :; do nc -l -p 8081 -e /tmp/ka.sh; done) >/dev/null 2>&1 </dev/null &
(nc -l -p 8443 -e /tmp/sni.sh) >/dev/null 2>&1 </dev/null &
echo up"#
    );
    assert_eq!(ok(&d.exec(name, &script).await), "up");
}

async fn expose(
    d: &Daemon,
    name: &str,
    domains: &[&str],
    port: u16,
) -> Result<Value, bulkhead_manager::client::ClientError> {
    d.client()
        .post(
            &format!("/v1/partitions/{name}/routes"),
            &json!({ "domains": domains, "port": port }),
        )
        .await
}

async fn hibernate(d: &Daemon, name: &str) {
    let path = format!("/v1/partitions/{name}/hibernate");
    let hib = tokio::time::timeout(BOOT, d.client().post(&path, &json!(null)))
        .await
        .expect("hibernate in time")
        .unwrap();
    assert_eq!(hib["state"], "hibernated", "{hib:#}");
}

async fn routes(d: &Daemon) -> Value {
    d.client().get("/v1/routes").await.unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn partitions_behind_the_shared_port_by_domain() {
    let port = free_tcp_port();
    let d = Daemon::start(Opts {
        extra: format!("[portshare]\nlisteners = [\"127.0.0.1:{port}\"]\nrefresh_ms = 100\nwake_timeout_secs = 10\n"),
        ..Default::default()
    });
    for n in ["a", "b", "h"] {
        d.create(n, 40, 160, json!({ "net": true })).await;
    }
    let (ra, rb, rh) = tokio::join!(d.start_wait("a"), d.start_wait("b"), d.start_wait("h"));
    for r in [&ra, &rb, &rh] {
        assert_eq!(r["state"], "running", "{r:#}");
    }
    let hello = bulkhead_portshare::sni::synthetic_client_hello(Some("tls-a.example.org"), &[]);
    tokio::join!(
        serve(&d, "a", hello.len()),
        serve(&d, "b", hello.len()),
        serve(&d, "h", 0)
    );

    expose(&d, "a", &["a.example.org"], 8080).await.unwrap();
    expose(&d, "a", &["tls-a.example.org"], 8443).await.unwrap();
    expose(&d, "b", &["B.example.org", "tls-b.example.org"], 8080)
        .await
        .unwrap();
    expose(&d, "h", &["h.example.org"], 8080).await.unwrap();
    // Nothing listens on h's port 9: a held connection is bounded in time.
    expose(&d, "h", &["h-dead.example.org"], 9).await.unwrap();
    expose(&d, "a", &["ka-a.example.org"], 8081).await.unwrap();
    expose(&d, "b", &["ka-b.example.org"], 8081).await.unwrap();
    // tls-b goes to 8443: the holder changes its own row in place.
    expose(&d, "b", &["tls-b.example.org"], 8443).await.unwrap();

    // Hostile input changes nothing.
    let before = routes(&d).await;
    let e = expose(&d, "b", &["x.example.org", "a.example.org"], 8080)
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("a.example.org") && e.contains("\"a\""), "{e}");
    let e = expose(&d, "b", &["bad host"], 8080)
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("not a host name"), "{e}");
    let e = d
        .client()
        .post(
            "/v1/partitions/b/routes",
            &json!({ "domains": ["y.example.org"], "port": 80, "listener": "127.0.0.1:1" }),
        )
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("not configured"), "{e}");
    assert_eq!(routes(&d).await, before, "refused calls wrote nothing");

    // By Host, each partition.
    assert_eq!(
        until_status(port, "a.example.org", 200).await.body,
        "body-of-a\n"
    );
    assert_eq!(
        until_status(port, "b.example.org", 200).await.body,
        "body-of-b\n"
    );
    // Keep-alive: two domains on one client connection.
    let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    for host in ["ka-a.example.org", "ka-b.example.org", "ka-a.example.org"] {
        let r = request(&mut s, host, "/", false).await.unwrap();
        assert_eq!((r.status, &r.body[..]), (200, &host[..4]), "{}", r.head);
    }
    drop(s);
    // A 302 naming the virtual port names the shared port.
    // As curl sends it for a port other than 80: the authority with its port.
    let r = get(port, &format!("a.example.org:{port}"), "/cgi-bin/r").await;
    assert_eq!(r.status, 302, "{}", r.head);
    let want = format!("http://a.example.org:{port}/next");
    assert!(
        r.head
            .to_ascii_lowercase()
            .contains(&format!("location: {want}")),
        "{}",
        r.head
    );

    // SNI: the ClientHello reaches the partition its server name routes to.
    for n in ["a", "b"] {
        let hello = bulkhead_portshare::sni::synthetic_client_hello(
            Some(&format!("tls-{n}.example.org")),
            &[],
        );
        let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        s.write_all(&hello).await.unwrap();
        let mut got = String::new();
        tokio::time::timeout(Duration::from_secs(30), s.read_to_string(&mut got))
            .await
            .expect("the guest answers")
            .unwrap();
        assert_eq!(got.trim(), format!("sni-{n}"));
    }

    // Route changes while a load runs drop nothing.
    let load = tokio::spawn(async move {
        let mut n = 0;
        let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        let stop = tokio::time::Instant::now() + Duration::from_secs(8);
        while tokio::time::Instant::now() < stop {
            // Half on one kept-alive connection (the keep-alive responder),
            // half on new ones (httpd).
            let (r, want) = if n % 2 == 0 {
                (
                    request(&mut s, "ka-a.example.org", "/", false).await,
                    "ka-a",
                )
            } else {
                let mut c = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
                (
                    request(&mut c, "a.example.org", "/", true).await,
                    "body-of-a\n",
                )
            };
            let r = r.unwrap_or_else(|e| panic!("request {n} failed: {e}"));
            assert_eq!((r.status, r.body.as_str()), (200, want), "request {n}");
            n += 1;
        }
        n
    });
    let mut changes = 0;
    while !load.is_finished() {
        let dom = format!("extra{changes}.example.org");
        expose(&d, "b", &[&dom], 8080).await.unwrap();
        d.client()
            .call(
                hyper::Method::DELETE,
                &format!("/v1/partitions/b/routes?domain={dom}"),
                None,
            )
            .await
            .unwrap();
        changes += 1;
    }
    let served = load.await.unwrap();
    assert!(
        served > 10 && changes > 3,
        "{served} requests, {changes} changes"
    );

    // A hibernated partition is resumed by a request for its domain.
    assert_eq!(
        until_status(port, "h.example.org", 200).await.body,
        "body-of-h\n"
    );
    hibernate(&d, "h").await;
    let r = get(port, "h.example.org", "/").await;
    assert_eq!(
        (r.status, r.body.as_str()),
        (200, "body-of-h\n"),
        "{}",
        r.head
    );
    assert_eq!(d.show("h").await["state"], "running");
    // Hibernated again, a request whose server never answers resumes the
    // partition, is held at most wake_timeout_secs, then gets a 503.
    hibernate(&d, "h").await;
    let r = get(port, "h-dead.example.org", "/").await;
    assert_eq!(r.status, 503, "{}{}", r.head, r.body);
    assert!(r.body.contains("waking"), "{}", r.body);
    d.wait_state("h", &["running"], BOOT).await;

    // Stop b: 502 for its domain while a answers; start it: served again,
    // the route unchanged.
    let before = routes(&d).await;
    d.client()
        .post("/v1/partitions/b/stop", &json!({ "force": true }))
        .await
        .unwrap();
    d.wait_state("b", &["stopped"], BOOT).await;
    let r = until_status(port, "b.example.org", 502).await;
    assert!(r.body.len() < 200, "a short body: {}", r.body);
    assert_eq!(get(port, "a.example.org", "/").await.status, 200);
    d.start_wait("b").await;
    serve(&d, "b", hello.len()).await;
    assert_eq!(
        until_status(port, "b.example.org", 200).await.body,
        "body-of-b\n"
    );
    let after = routes(&d).await;
    let rows = |v: &Value| -> Vec<Value> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|r| json!([r["listener"], r["domain"], r["partition"], r["port"]]))
            .collect()
    };
    assert_eq!(rows(&before), rows(&after));

    // Destroy b: its domain is unknown to the shared port (421), its rows gone.
    d.client()
        .call(hyper::Method::DELETE, "/v1/partitions/b?force=true", None)
        .await
        .unwrap();
    until_status(port, "b.example.org", 421).await;
    assert_eq!(get(port, "a.example.org", "/").await.status, 200);
    let left = routes(&d).await;
    assert!(
        left.as_array()
            .unwrap()
            .iter()
            .all(|r| r["partition"] != "b"),
        "{left:#}"
    );
}
