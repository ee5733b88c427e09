//! bulkhead-agent binary: the guest's /init (see the `guest` module).

fn main() {
    bulkhead_agent::guest::main()
}
