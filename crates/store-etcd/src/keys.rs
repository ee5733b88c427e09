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
    /// `<prefix>/<kind>/` (a range) or, with an `id`, `<prefix>/<kind>/<id>`
    /// (escaped): the keys of records other than partitions.
    pub(crate) fn under(&self, kind: &str, id: Option<&str>) -> String {
        format!(
            "{}/{kind}/{}",
            self.prefix,
            id.map(escape).unwrap_or_default()
        )
    }
    // --- grants (issue 11) ---
    /// Everything of one host's grant table: `<prefix>/grants/<host>/`.
    fn grants(&self, host: &str) -> String {
        format!("{}/grants/{}/", self.prefix, escape(host))
    }

    /// The table's body; its etcd `version` is the table's revision.
    pub(crate) fn grant_table(&self, host: &str) -> String {
        format!("{}table", self.grants(host))
    }

    /// The newest log seq given (decimal), so seqs survive pruning unreused.
    pub(crate) fn grant_seq(&self, host: &str) -> String {
        format!("{}seq", self.grants(host))
    }

    /// The log lines: `<prefix>/grants/<host>/log/` (a range).
    pub(crate) fn grant_log(&self, host: &str) -> String {
        format!("{}log/", self.grants(host))
    }

    /// One log line; zero-padded so that key order is seq order.
    pub(crate) fn grant_line(&self, host: &str, seq: u64) -> String {
        format!("{}{seq:020}", self.grant_log(host))
    }
}

/// The end of the range of keys starting with `prefix` (which ends in `/`,
/// as every range here does): `/` + 1 is `0`.
pub(crate) fn range_end(prefix: &str) -> String {
    let base = prefix
        .strip_suffix('/')
        .expect("a range prefix ends with '/'");
    format!("{base}0")
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

    #[test]
    fn grant_keys_stay_inside_their_host() {
        let k = Keys::new("/t");
        assert_eq!(k.grant_table("h-1"), "/t/grants/h-1/table");
        assert_eq!(k.grant_seq("h-1"), "/t/grants/h-1/seq");
        assert_eq!(
            k.grant_line("h-1", 7),
            "/t/grants/h-1/log/00000000000000000007"
        );
        // A host named like another's subtree stays out of it.
        assert!(!k.grant_table("a/log").starts_with(&k.grant_log("a")));
        let (start, end) = (k.grant_log("h"), range_end(&k.grant_log("h")));
        for seq in [0, 1, u64::MAX] {
            let line = k.grant_line("h", seq);
            assert!(
                start <= line && line < end,
                "{line} outside [{start}, {end})"
            );
        }
        assert!(k.grant_table("h") >= end || k.grant_table("h") < start);
        assert!(k.grant_seq("h") >= end || k.grant_seq("h") < start);
        assert!(k.grant_line("h", 10) > k.grant_line("h", 9));
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
