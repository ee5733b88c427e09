//! The CLI checks partition names as the daemon does before it builds a
//! request: a name with a space once panicked it, and `x?force=true`
//! smuggled a query string into `destroy`. No daemon is needed: a bad name
//! never reaches the socket.

use std::process::Command;

fn bulkhead(args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_bulkhead"))
        .args(args)
        .args(["--socket", "/nonexistent/bulkhead-test.sock"])
        .env_remove("BULKHEAD_API")
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn bad_names_are_refused_before_any_request() {
    for (args, name) in [
        (vec!["partition", "show", "a b"], "a b"),
        (vec!["partition", "stats", "a b"], "a b"),
        (vec!["partition", "destroy", "x?force=true"], "x?force=true"),
        (vec!["partition", "stop", "../host"], "../host"),
        (vec!["partition", "start", "x/stop"], "x/stop"),
        (vec!["partition", "console", "--log", "a%20b"], "a%20b"),
    ] {
        let (code, err) = bulkhead(&args);
        assert_eq!(code, 1, "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{args:?}: {err}");
        assert!(
            err.contains("partition name") && err.contains(name),
            "{args:?}: {err}"
        );
    }
    // A good name gets as far as the (missing) daemon.
    let (code, err) = bulkhead(&["partition", "show", "good-name"]);
    assert_eq!(code, 1);
    assert!(err.contains("cannot reach bulkheadd"), "{err}");
}

#[test]
fn the_tcp_api_needs_a_way_to_trust_the_daemon() {
    let (code, err) = bulkhead(&[
        "partition",
        "list",
        "--api",
        "127.0.0.1:9",
        "--token",
        "a-token-of-twenty-bytes",
    ]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("--tls-fingerprint"), "{err}");
    let (code, err) = bulkhead(&[
        "partition",
        "list",
        "--api",
        "127.0.0.1:9",
        "--tls-fingerprint",
        "nope",
    ]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("SHA-256"), "{err}");
}
