//! An image with `--add`ed programs boots and runs them: a dynamically linked
//! host program (its libraries and ELF interpreter come along) and a script.
//! Uses the static agent `make agent` built.

use std::time::Duration;

use bulkhead_image::build::{self, BuildOptions};

mod common;

use common::{boot, workspace};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn added_programs_run_in_the_guest() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("img");
    let script = dir.path().join("hello.sh");
    std::fs::write(&script, "#!/bin/sh\necho \"hello from $(hostname)\"\n").unwrap();
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let mut opts = BuildOptions::new(&img);
    opts.agent = workspace().join(bulkhead_image::DEFAULT_AGENT);
    opts.adds = vec![
        "/usr/bin/xz:/opt/bin/xz".parse().unwrap(),
        format!("{}:/usr/local/bin/hello", script.display())
            .parse()
            .unwrap(),
    ];
    let built = tokio::task::spawn_blocking(move || build::build(&opts, &mut |l| eprintln!("{l}")))
        .await
        .unwrap()
        .expect("image builds (run `make agent` first)");
    assert!(built
        .manifest()
        .added
        .iter()
        .any(|(d, _)| d.starts_with("/lib64/ld-linux-x86-64.so.2")));

    let g = boot(dir.path(), &img, "bulkhead.hostname=adds", &[]).await;
    let agent = &g.agent;
    agent
        .wait_ready(Duration::from_secs(120))
        .await
        .expect("ready");

    let out = agent
        .exec(
            &["/opt/bin/xz".into(), "--version".into()],
            None,
            Duration::from_secs(30),
        )
        .await
        .unwrap();
    assert_eq!(out.code, 0, "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("XZ Utils"));
    let out = agent
        .exec(&["hello".into()], None, Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hello from adds\n");

    g.power_off().await;
}
