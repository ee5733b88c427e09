//! The id of the host a daemon is: written into every record it owns, so a
//! store shared by several daemons (a cluster) knows whose each partition is.
//! Stable across restarts: configured, or generated once into the data
//! directory.

use std::path::Path;

/// Longest id accepted; a UUID is 36.
const MAX_LEN: usize = 64;

/// An id is 1-64 letters, digits, '.', '_' or '-' (a UUID, a host name).
pub fn check(id: &str) -> Result<(), String> {
    if id.is_empty() || id.len() > MAX_LEN {
        return Err(format!("host id {id:?} must be 1-{MAX_LEN} characters"));
    }
    if !id
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        return Err(format!(
            "host id {id:?} may hold only letters, digits, '.', '_' and '-'"
        ));
    }
    Ok(())
}

/// The id in `<data_dir>/host-id`, made (a random UUID) if the file is absent.
pub fn load_or_create(data_dir: &Path) -> anyhow::Result<String> {
    let path = data_dir.join("host-id");
    match std::fs::read_to_string(&path) {
        Ok(s) => {
            let id = s.trim().to_string();
            check(&id).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
            Ok(id)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            // The kernel hands out random (v4) UUIDs; no crate needed.
            let id = std::fs::read_to_string("/proc/sys/kernel/random/uuid")?
                .trim()
                .to_string();
            check(&id).map_err(anyhow::Error::msg)?;
            // Written whole or not at all: a crash never leaves half an id.
            let tmp = data_dir.join(".host-id.tmp");
            std::fs::write(&tmp, format!("{id}\n"))?;
            std::fs::rename(&tmp, &path)?;
            Ok(id)
        }
        Err(e) => Err(anyhow::anyhow!("reading {}: {e}", path.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_once_then_kept() {
        let d = tempfile::tempdir().unwrap();
        let a = load_or_create(d.path()).unwrap();
        assert_eq!(a.len(), 36, "{a}");
        assert_eq!(load_or_create(d.path()).unwrap(), a);
        let other = tempfile::tempdir().unwrap();
        assert_ne!(load_or_create(other.path()).unwrap(), a);
    }

    #[test]
    fn bad_ids_are_refused() {
        for bad in ["", "a b", "../x", &"x".repeat(65)] {
            assert!(check(bad).is_err(), "{bad:?}");
        }
        check("host-a.example_1").unwrap();
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("host-id"), "no good\n").unwrap();
        assert!(load_or_create(d.path()).is_err());
    }
}
