//! bulkhead-agent binary: the guest's /init (see the `guest` module).

fn main() {
    // Installed in the image as bulkhead-guest too: the in-guest command.
    let args: Vec<String> = std::env::args().collect();
    let prog = args.first().map(String::as_str).unwrap_or_default();
    if prog.rsplit('/').next() == Some("bulkhead-guest") {
        std::process::exit(bulkhead_agent::guest::tool::main(&args[1..]));
    }
    // The kernel may pass unrecognised command-line words to init as
    // arguments; only these two are ours.
    match std::env::args().nth(1).as_deref() {
        Some("--version") => println!("bulkhead-agent {}", env!("CARGO_PKG_VERSION")),
        Some("--help") => println!(
            "bulkhead-agent: the init process of Bulkhead partitions.\n\
             Runs as PID 1 in the guest (docs/guest-image.md); elsewhere it only serves\n\
             the virtio-serial port {}.",
            bulkhead_agent::PORT_NAME
        ),
        _ => bulkhead_agent::guest::main(),
    }
}
