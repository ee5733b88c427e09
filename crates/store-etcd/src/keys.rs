//! The key layout under a store's prefix. Names and addresses are escaped so
//! that no value can reach outside its own key or into another's range
//! (a partition `a/b` must not fall under the events of `a`).

/// Keys of one store, all under `<prefix>/`.
#[derive(Debug, Clone)]
pub(crate) struct Keys {
    prefix: String,
}

/// Events kept per partition; older ones are removed by the write that adds
/// the newest, so a partition's history never grows without bound.
pub(crate) const EVENT_HISTORY: u64 = 256;

impl Keys {
    pub(crate) fn new(prefix: &str) -> Self {
        Self {
            prefix: prefix.trim_end_matches('/').to_string(),
        }
    }

    /// Every partition record: `<prefix>/partitions/` (a range).
    pub(crate) fn partitions(&self) -> String {
        format!("{}/partitions/", self.prefix)
    }

    pub(crate) fn partition(&self, name: &str) -> String {
        format!("{}{}", self.partitions(), escape(name))
    }

    /// The index key that makes an address unique: its value is the owner's name.
    pub(crate) fn address(&self, ip: &str) -> String {
        format!("{}/addresses/{}", self.prefix, escape(ip))
    }

    /// One partition's history: `<prefix>/events/<name>/` (a range).
    pub(crate) fn events(&self, name: &str) -> String {
        format!("{}/events/{}/", self.prefix, escape(name))
    }

    /// The event written with the record's `version`; zero-padded so that
    /// key order is write order.
    pub(crate) fn event(&self, name: &str, version: u64) -> String {
        format!("{}{version:020}", self.events(name))
    }

    // --- LUs and clients (issue 14) ---

    /// Every LU record: `<prefix>/lus/` (a range).
    pub(crate) fn lus(&self) -> String {
        format!("{}/lus/", self.prefix)
    }

    pub(crate) fn lu(&self, name: &str) -> String {
        format!("{}{}", self.lus(), escape(name))
    }

    /// Every LU lock: `<prefix>/lu-locks/` (a range).
    pub(crate) fn lu_locks(&self) -> String {
        format!("{}/lu-locks/", self.prefix)
    }

    /// The locks of one LU (a range).
    pub(crate) fn lu_locks_of(&self, lu: &str) -> String {
        format!("{}{}/", self.lu_locks(), escape(lu))
    }

    /// One holder's lock: `<prefix>/lu-locks/<lu>/<partition>/<adapter>`.
    pub(crate) fn lu_lock(&self, lu: &str, partition: &str, adapter: &str) -> String {
        format!(
            "{}{}/{}",
            self.lu_locks_of(lu),
            escape(partition),
            escape(adapter)
        )
    }
}

/// Percent-escapes every byte but `[A-Za-z0-9._:-]`, so `/` never appears.
fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"._:-".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_stay_inside_their_keys() {
        let k = Keys::new("/t/");
        assert_eq!(k.partition("web-1"), "/t/partitions/web-1");
        assert_eq!(k.partition("a/b"), "/t/partitions/a%2Fb");
        assert!(!k.event("a/b", 1).starts_with(&k.events("a")));
        assert_eq!(k.address("fd00::1"), "/t/addresses/fd00::1");
        assert_eq!(k.event("e", 7), "/t/events/e/00000000000000000007");
        assert!(k.event("e", 10) > k.event("e", 9));
        assert_eq!(k.lu_lock("a/b", "p", "disk0"), "/t/lu-locks/a%2Fb/p/disk0");
        assert!(!k.lu_lock("a/b", "p", "d").starts_with(&k.lu_locks_of("a")));
    }

    proptest::proptest! {
        /// Escaping is one-to-one and never yields a `/`, so no name's keys
        /// fall inside another name's range.
        #[test]
        fn escaping_is_injective_and_slash_free(a in ".{0,12}", b in ".{0,12}") {
            let (ea, eb) = (escape(&a), escape(&b));
            proptest::prop_assert!(!ea.contains('/'));
            proptest::prop_assert_eq!(ea == eb, a == b);
            let k = Keys::new("/p");
            proptest::prop_assert_eq!(
                k.event(&b, 1).starts_with(&k.events(&a)),
                a == b
            );
        }
    }
}
