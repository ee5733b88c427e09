//! The one naming scheme for partition TAPs and MACs. The engine (for a spec
//! that names none) and the manager both call these, so a name means the same
//! thing wherever it is read.
//!
//! A TAP name is `bh` + 4 characters from the instance + 9 characters from
//! (instance, partition, adapter), in base32hex: 15 bytes, the most an
//! interface name holds (IFNAMSIZ is 16 with the NUL). The instance is the id
//! of the daemon (or tool) that owns the TAP, so two daemons on one host never
//! make the same name, and each can tell its own TAPs by their prefix
//! ([`is_tap_of`]) when it removes orphans.
//!
//! A MAC is locally administered and unicast (first octet 0x52). An adapter
//! with an address gets `52:54:` + the four IPv4 octets ([`mac_for_addr`]):
//! unique wherever the address is. One without gets `52:54:00:` + 3 hashed
//! bytes ([`derived_mac`]); the two ranges are disjoint since no usable IPv4
//! address starts with 0.

use std::net::Ipv4Addr;

use sha2::{Digest, Sha256};

use crate::HostnetError;

/// The longest interface name the kernel takes (IFNAMSIZ less the NUL).
pub const IFNAME_MAX: usize = 15;

/// Every TAP this scheme makes starts with this.
pub const TAP_PREFIX: &str = "bh";

const INSTANCE_CHARS: usize = 4;
const ADAPTER_CHARS: usize = IFNAME_MAX - TAP_PREFIX.len() - INSTANCE_CHARS;

// base32hex, lower case: names stay [0-9a-v], valid for every tool.
const ALPHABET: &[u8; 32] = b"0123456789abcdefghijklmnopqrstuv";

fn digest(parts: &[&str]) -> [u8; 32] {
    let mut h = Sha256::new();
    for p in parts {
        // Lengths first: ("a/b", "c") and ("a", "b/c") must not collide.
        h.update((p.len() as u64).to_le_bytes());
        h.update(p.as_bytes());
    }
    h.finalize().into()
}

/// The first `n` base32 characters of `bytes` (5 bits each).
fn base32(bytes: &[u8], n: usize) -> String {
    (0..n)
        .map(|i| {
            let bit = i * 5;
            let word = u16::from_be_bytes([bytes[bit / 8], bytes[bit / 8 + 1]]);
            let v = (word >> (11 - bit % 8)) & 0x1f;
            ALPHABET[v as usize] as char
        })
        .collect()
}

/// The prefix of every TAP that `instance` names.
pub fn tap_prefix(instance: &str) -> String {
    format!(
        "{TAP_PREFIX}{}",
        base32(&digest(&["instance", instance]), INSTANCE_CHARS)
    )
}

/// The TAP of `adapter` of `partition`, owned by `instance`.
pub fn tap_name(instance: &str, partition: &str, adapter: &str) -> String {
    let d = digest(&["tap", instance, partition, adapter]);
    format!("{}{}", tap_prefix(instance), base32(&d, ADAPTER_CHARS))
}

/// Whether `name` is a TAP that `instance` named (for orphan clean-up).
pub fn is_tap_of(name: &str, instance: &str) -> bool {
    name.len() == IFNAME_MAX && name.starts_with(&tap_prefix(instance))
}

/// The MAC of an adapter whose guest has address `ip`.
pub fn mac_for_addr(ip: Ipv4Addr) -> String {
    let o = ip.octets();
    format!("52:54:{:02x}:{:02x}:{:02x}:{:02x}", o[0], o[1], o[2], o[3])
}

/// The MAC of an adapter with no address: stable for (instance, partition,
/// adapter).
pub fn derived_mac(instance: &str, partition: &str, adapter: &str) -> String {
    let h = digest(&["mac", instance, partition, adapter]);
    format!("52:54:00:{:02x}:{:02x}:{:02x}", h[0], h[1], h[2])
}

/// Checks a name the kernel would take for an interface (as its
/// `dev_valid_name`): 1-15 bytes, not `.` or `..`, no `/`, `:` or space.
pub fn check_ifname(name: &str) -> Result<(), HostnetError> {
    let ok = !name.is_empty()
        && name.len() <= IFNAME_MAX
        && name != "."
        && name != ".."
        && !name
            .bytes()
            .any(|b| b == b'/' || b == b':' || b == 0 || b.is_ascii_whitespace());
    if ok {
        Ok(())
    } else {
        Err(HostnetError::InvalidName(name.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashSet;

    #[test]
    fn tap_names_are_15_bytes_stable_and_per_instance() {
        let t = tap_name(
            "abcdef12",
            "a-very-long-partition-name-well-past-15",
            "net0",
        );
        assert_eq!(t.len(), IFNAME_MAX, "{t}");
        check_ifname(&t).unwrap();
        assert_eq!(
            t,
            tap_name(
                "abcdef12",
                "a-very-long-partition-name-well-past-15",
                "net0"
            )
        );
        assert_ne!(
            t,
            tap_name(
                "abcdef13",
                "a-very-long-partition-name-well-past-15",
                "net0"
            )
        );
        assert_ne!(
            t,
            tap_name(
                "abcdef12",
                "a-very-long-partition-name-well-past-15",
                "net1"
            )
        );
        assert!(is_tap_of(&t, "abcdef12"));
        assert!(!is_tap_of(&t, "abcdef13"));
        // Parts are length-delimited in the hash: a shifted separator is another name.
        assert_ne!(tap_name("a", "b-c", "d"), tap_name("a-b", "c", "d"));
    }

    #[test]
    fn a_thousand_partitions_of_ten_daemons_get_distinct_taps() {
        let mut seen = HashSet::new();
        for d in 0..10 {
            for p in 0..1000 {
                assert!(seen.insert(tap_name(&format!("{d:08x}"), &format!("p{p}"), "net0")));
            }
        }
        let prefixes: HashSet<_> = (0..10).map(|d| tap_prefix(&format!("{d:08x}"))).collect();
        assert_eq!(prefixes.len(), 10);
    }

    #[test]
    fn macs_are_local_unicast_and_the_two_ranges_disjoint() {
        assert_eq!(
            mac_for_addr(Ipv4Addr::new(10, 77, 0, 2)),
            "52:54:0a:4d:00:02"
        );
        let m = derived_mac("i", "p", "n0");
        assert!(m.starts_with("52:54:00:"), "{m}");
        assert_ne!(m, derived_mac("j", "p", "n0"));
        let first = u8::from_str_radix(&m[..2], 16).unwrap();
        assert_eq!(first & 0b11, 0b10, "locally administered, unicast");
    }

    #[test]
    fn interface_names_the_kernel_refuses_are_refused() {
        for bad in [
            "",
            ".",
            "..",
            "a/b",
            "a:b",
            "a b",
            "sixteen-chars-xx",
            "a\0",
        ] {
            assert!(check_ifname(bad).is_err(), "{bad:?}");
        }
        for good in ["br0", "bulkhead0", "fifteen-chars-x"] {
            check_ifname(good).unwrap();
        }
    }

    proptest! {
        #[test]
        fn every_tap_name_is_a_valid_interface_name(i in ".*", p in ".*", a in ".*") {
            let t = tap_name(&i, &p, &a);
            prop_assert!(check_ifname(&t).is_ok());
            prop_assert!(is_tap_of(&t, &i));
            prop_assert!(t.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit()));
        }
    }
}
