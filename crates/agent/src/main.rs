//! bulkhead-agent binary: the guest's /init (see the `guest` module).

fn main() {
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
