//! schemathesis (from PyPI, in the venv scripts/python-tools makes) against a
//! real bulkheadd: the TCP API with TLS and a token, the document it serves,
//! every check, bounded in examples and time. Operations that would boot a
//! guest are disabled in tests/schemathesis.toml (with the reason), and the
//! test checks afterwards that none did.

mod common;

use common::{Daemon, Opts};
use std::io::Read;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const TOKEN: &str = "schemathesis-token-of-32-bytes-x";
/// Examples per operation and the time budget of the whole run.
const MAX_EXAMPLES: &str = "25";
const MAX_TIME_SECS: u64 = 90;

/// The schemathesis binary: $BULKHEAD_SCHEMATHESIS, else the project venv's.
fn schemathesis() -> PathBuf {
    if let Some(p) = std::env::var_os("BULKHEAD_SCHEMATHESIS") {
        return p.into();
    }
    let venv = std::env::var_os("BULKHEAD_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").expect("HOME")).join(".cache/bulkhead/venv")
        });
    venv.join("bin/schemathesis")
}

#[tokio::test(flavor = "multi_thread")]
async fn schemathesis_checks_pass_against_the_served_document() {
    let bin = schemathesis();
    assert!(
        bin.is_file(),
        "{} is missing: run scripts/python-tools (make test does)",
        bin.display()
    );
    // A shared port, so the expose operations get past "the feature is off".
    let shared = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let d = Daemon::start(Opts {
        tcp_token: Some(TOKEN.into()),
        extra: format!("[portshare]\nlisteners = [\"{shared}\"]\n"),
        ..Default::default()
    });
    let addr = d.tcp.clone().unwrap();
    let config = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/schemathesis.toml");
    let work = d.dir.path().join("schemathesis");
    std::fs::create_dir_all(&work).unwrap();
    let seed = std::env::var("BULKHEAD_SCHEMATHESIS_SEED").unwrap_or_else(|_| "20261207".into());
    // One worker: hypothesis describes its filters by parsing their source
    // with `ast`, which Debian's Python 3.11.2 does not do safely from two
    // threads at once ("AST constructor recursion depth mismatch", a
    // schemathesis runtime error in CI, not a finding about the API).
    let mut child = Command::new(&bin)
        .arg("--config-file")
        .arg(&config)
        .args(["--no-color", "run", &format!("https://{addr}/openapi.json")])
        .args(["-H", &format!("Authorization: Bearer {TOKEN}")])
        .arg("--tls-verify")
        .arg(d.cert())
        .args(["--max-examples", MAX_EXAMPLES])
        .args(["--max-time", &MAX_TIME_SECS.to_string()])
        .args(["--workers", "1", "--request-timeout", "30", "--seed", &seed])
        .current_dir(&work)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Read the output on threads so a full pipe cannot stall the run.
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let out = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let err = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    // --max-time bounds generation; allow for start-up and the last requests.
    let deadline = Instant::now() + Duration::from_secs(MAX_TIME_SECS + 120);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break Some(s);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let (out, err) = (out.join().unwrap(), err.join().unwrap());
    println!("{out}\n{err}");
    let status = status.unwrap_or_else(|| panic!("schemathesis ran past its deadline"));
    assert!(status.success(), "schemathesis found failures (above)");
    assert!(
        out.contains("Tested: 53"),
        "schemathesis did not test the 53 enabled operations"
    );

    // No operation it ran started a guest, and the daemon still answers.
    let list = d.client().list().await.unwrap();
    let active: Vec<_> = list.iter().filter(|p| p.state.is_active()).collect();
    assert!(active.is_empty(), "partitions started: {active:?}");
    assert!(d.taps().is_empty(), "TAPs left: {:?}", d.taps());
}
