//! bulkheadd's configuration: a TOML file over embedded defaults that suit
//! one machine; `--data-dir` and `--socket` override the file.

use serde::Deserialize;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// State database, per-partition run directories, console logs.
    pub data_dir: PathBuf,
    /// The API's unix socket (mode 0600).
    pub socket: PathBuf,
    /// Default guest image directory (vmlinux + initramfs.cpio.gz).
    pub image_dir: PathBuf,
    pub api: ApiConfig,
    pub network: NetworkConfig,
    pub capacity: CapacityConfig,
    pub partitions: PartitionDefaults,
    pub cgroup: CgroupConfig,
    pub storage: StorageConfig,
    pub qemu: QemuConfig,
    pub store: StoreConfig,
    pub cluster: ClusterConfig,
    pub grants: GrantsConfig,
    pub portshare: crate::expose::PortshareConfig,
    /// `[pool]`: the service pools' gateway (issue 17).
    pub pool: crate::pools::PoolConfig,
    /// `[metrics]`: the Prometheus endpoint.
    pub metrics: crate::metrics::MetricsConfig,
}

/// `[grants]`: the grant table's bounds and the unmap deadlines (docs/grants.md).
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GrantsConfig {
    /// Longest chain owner → … → holder (a grant from the owner is 1 deep).
    pub max_depth: u8,
    /// How long a cookie may wait to be accepted.
    pub cookie_ttl_ms: u64,
    /// How long a holder's agent has to let go of a mapping before the device
    /// is unplugged anyway.
    pub unmap_deadline_ms: u64,
    /// How long the guest kernel has to ack the unplug; past it the holder is
    /// paused so it reads nothing the owner writes later.
    pub unplug_timeout_ms: u64,
    /// Live grants one partition may have issued, and resources it may own.
    pub max_live_grants_per_partition: usize,
    pub max_resources_per_partition: usize,
    /// Where region files live: a memory file system (tmpfs).
    /// `/dev/shm/bulkhead-<instance>` when absent.
    pub region_dir: Option<PathBuf>,
    /// Log lines (and ended grants) are kept this long...
    pub log_retention_ms: u64,
    /// ...and at least this many of the newest lines whatever their age.
    pub log_keep: usize,
}

impl Default for GrantsConfig {
    fn default() -> Self {
        let t = bulkhead_grant::GrantConfig::default();
        Self {
            max_depth: t.max_depth,
            cookie_ttl_ms: t.cookie_ttl_ms,
            unmap_deadline_ms: 2000,
            unplug_timeout_ms: 5000,
            max_live_grants_per_partition: t.max_live_grants_per_partition,
            max_resources_per_partition: t.max_resources_per_partition,
            region_dir: None,
            log_retention_ms: 30 * 86_400_000,
            log_keep: 10_000,
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StoreConfig {
    /// The SQLite state database; `<data_dir>/state.db` when absent. Daemons
    /// naming one file share their partitions' records and admit against them.
    pub path: Option<PathBuf>,
    /// This daemon's host id, written into every record it owns; read from
    /// (or generated once into) `<data_dir>/host-id` when absent.
    pub host_id: Option<String>,
}

/// The cluster store: with `etcd` endpoints the daemon keeps its records in
/// etcd (`bulkhead-store-etcd`) instead of SQLite.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClusterConfig {
    /// etcd client URLs (`http://host:2379`); empty: the SQLite store.
    pub etcd: Vec<String>,
    /// Every key the daemon writes lives under this prefix.
    pub prefix: String,
    /// The bound on every store call; past it the call is "unavailable".
    pub timeout_ms: u64,
    /// This host's name in the cluster (unique; `partition create --host`);
    /// the host id when absent.
    pub name: Option<String>,
    /// Membership lease: a host that has not renewed for this long is lost.
    pub lease_ms: u64,
    /// `address:port` other hosts reach this host's TCP API at (commands for
    /// its partitions are forwarded there); `api.tcp` when that is a
    /// specific address.
    pub advertise: Option<String>,
    /// This host's address on the hosts' network: with it the VLAN bridge
    /// gets a VXLAN port towards every other host's underlay address.
    pub underlay: Option<Ipv4Addr>,
    /// The VXLAN network identifier of the VLAN (the same on every host).
    pub vxlan_id: u32,
    /// UDP port of the VXLAN tunnels (IANA's 4789 by default).
    pub vxlan_port: u16,
    /// The repository of LUs, a directory every host mounts at the same
    /// path; `<data_dir>/repository` when absent (a single host).
    pub repository: Option<PathBuf>,
    /// Seconds a remote restart's target waits for a `stop` before it
    /// unlocks by itself (removing nothing); a `start` may give its own.
    pub remote_restart_timeout_secs: u64,
    /// A host that has not renewed its lease for this long kills its own
    /// partitions (self-fence); five sixths of `lease_ms` when absent. See
    /// docs/cluster.md, "Fencing", for the rule it must keep.
    pub self_fence_ms: Option<u64>,
    /// How long after a host's lease is gone its partitions may be claimed
    /// by another host; a third of `lease_ms` (at least 500) when absent.
    pub takeover_margin_ms: Option<u64>,
    /// A watchdog device fed while the lease is held (a backstop of the
    /// self-fence: the kernel resets the host when feeding stops); none
    /// when absent.
    pub watchdog: Option<PathBuf>,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        Self {
            etcd: Vec::new(),
            prefix: "/bulkhead/v1".into(),
            timeout_ms: 5000,
            name: None,
            lease_ms: 5000,
            advertise: None,
            underlay: None,
            vxlan_id: 7700,
            vxlan_port: 4789,
            repository: None,
            remote_restart_timeout_secs: 600,
            self_fence_ms: None,
            takeover_margin_ms: None,
            watchdog: None,
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StorageConfig {
    /// Directories partition disks (and their backing files) may come from;
    /// `<data_dir>/storage` when empty. None may hold the data directory.
    pub roots: Vec<PathBuf>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct QemuConfig {
    /// The unprivileged user every partition's QEMU runs as (scripts/bootstrap
    /// creates it; bulkheadd refuses to start without it).
    pub user: String,
}

impl Default for QemuConfig {
    fn default() -> Self {
        Self {
            user: "bulkhead-qemu".into(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ApiConfig {
    /// Also serve the API on this TCP address (TLS); requires a token.
    pub tcp: Option<SocketAddr>,
    /// Bearer token for TCP clients (at least [`MIN_TOKEN_BYTES`]).
    pub token: Option<String>,
    /// File holding the bearer token (first line), instead of `token`.
    pub token_file: Option<PathBuf>,
    /// PEM certificate chain and key for the TCP API; without them a
    /// self-signed pair is made under `<data_dir>/tls/`.
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// TLS handshake plus a request's line and headers must arrive within
    /// this, counted from when the daemon waits for them (so it also closes
    /// a keep-alive connection that sends no next request).
    pub header_timeout_ms: u64,
    /// A connection that moves no byte for this long while no request is
    /// being answered is closed; a request body must arrive within it.
    pub idle_timeout_ms: u64,
    /// TCP connections served at once (also capped at half the daemon's
    /// file descriptor limit); more wait in the listen backlog.
    pub max_connections: usize,
}

/// Shortest bearer token accepted: a guessable token opens the whole API.
pub const MIN_TOKEN_BYTES: usize = 16;

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NetworkConfig {
    /// The internal VLAN's Linux bridge (≤ 15 characters).
    pub bridge: String,
    /// The VLAN's IPv4 subnet; the bridge takes the first host address.
    pub subnet: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CapacityConfig {
    /// Host CPUs to plan with; detected when absent.
    pub cpus: Option<u32>,
    /// Host memory to plan with, MiB; detected when absent.
    pub memory_mib: Option<u64>,
    /// Sum of entitlements may reach host CPUs × 100% × this ratio.
    pub cpu_overcommit: f64,
    /// Memory kept for the host itself, MiB.
    pub memory_reserve_mib: u64,
    /// QEMU's own memory on top of the guest's, MiB: counted in capacity and in
    /// the partition's cgroup limit.
    pub qemu_overhead_mib: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PartitionDefaults {
    /// How long `start --wait` waits for the agent's ready.
    pub ready_timeout_secs: u64,
    /// How long a graceful stop waits before killing QEMU.
    pub stop_timeout_secs: u64,
    /// Console log size at which it is rotated (one old generation kept).
    pub console_log_max_bytes: u64,
    /// Policy restarts allowed before a partition is left failed.
    pub max_restarts: u32,
    /// Guest vCPUs and memory accepted per partition.
    pub max_vcpus: u32,
    pub min_memory_mib: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CgroupConfig {
    /// Parent of every partition's cgroup, in each hierarchy (v1) or the
    /// unified tree (v2). Each daemon uses `<parent>/<instance>/<partition>`.
    pub parent: String,
    /// Distinguishes daemons sharing a host; derived from the data directory when absent.
    pub instance: Option<String>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            data_dir: "/var/lib/bulkhead".into(),
            socket: DEFAULT_SOCKET.into(),
            image_dir: bulkhead_engine::default_image_dir(),
            api: ApiConfig::default(),
            network: NetworkConfig::default(),
            capacity: CapacityConfig::default(),
            partitions: PartitionDefaults::default(),
            cgroup: CgroupConfig::default(),
            storage: StorageConfig::default(),
            qemu: QemuConfig::default(),
            store: StoreConfig::default(),
            cluster: ClusterConfig::default(),
            grants: GrantsConfig::default(),
            portshare: Default::default(),
            pool: Default::default(),
            metrics: Default::default(),
        }
    }
}

pub const DEFAULT_SOCKET: &str = "/run/bulkhead/bulkheadd.sock";

impl Default for ApiConfig {
    fn default() -> Self {
        Self {
            tcp: None,
            token: None,
            token_file: None,
            tls_cert: None,
            tls_key: None,
            header_timeout_ms: 10_000,
            idle_timeout_ms: 60_000,
            max_connections: 256,
        }
    }
}

impl Default for NetworkConfig {
    fn default() -> Self {
        Self {
            bridge: "bulkhead0".into(),
            subnet: "10.77.0.0/24".into(),
        }
    }
}

impl Default for CapacityConfig {
    fn default() -> Self {
        Self {
            cpus: None,
            memory_mib: None,
            cpu_overcommit: 4.0,
            memory_reserve_mib: 1024,
            qemu_overhead_mib: 192,
        }
    }
}

impl Default for PartitionDefaults {
    fn default() -> Self {
        Self {
            ready_timeout_secs: 120,
            stop_timeout_secs: 30,
            console_log_max_bytes: 1 << 20,
            max_restarts: 5,
            max_vcpus: 64,
            min_memory_mib: 64,
        }
    }
}

impl Default for CgroupConfig {
    fn default() -> Self {
        Self {
            parent: "bulkhead".into(),
            instance: None,
        }
    }
}

impl Config {
    /// Reads `path` over the defaults (the defaults alone when `None`), then
    /// applies the command-line overrides and checks the result.
    pub fn load(
        path: Option<&Path>,
        data_dir: Option<PathBuf>,
        socket: Option<PathBuf>,
    ) -> anyhow::Result<Self> {
        let mut cfg = match path {
            Some(p) => {
                let text = std::fs::read_to_string(p)
                    .map_err(|e| anyhow::anyhow!("reading config {}: {e}", p.display()))?;
                Self::parse(&text).map_err(|e| anyhow::anyhow!("config {}: {e}", p.display()))?
            }
            None => Self::default(),
        };
        if let Some(d) = data_dir {
            cfg.data_dir = d;
        }
        if let Some(s) = socket {
            cfg.socket = s;
        }
        cfg.validate()?;
        Ok(cfg)
    }

    pub fn parse(text: &str) -> Result<Self, toml::de::Error> {
        toml::from_str(text)
    }

    pub fn validate(&self) -> anyhow::Result<()> {
        crate::net::Subnet::parse(&self.network.subnet)?;
        let g = &self.grants;
        if !(1..=16).contains(&g.max_depth) {
            anyhow::bail!("grants.max_depth must be 1-16, got {}", g.max_depth);
        }
        for (what, v) in [
            ("cookie_ttl_ms", g.cookie_ttl_ms),
            ("unmap_deadline_ms", g.unmap_deadline_ms),
            ("unplug_timeout_ms", g.unplug_timeout_ms),
        ] {
            if !(1..=86_400_000).contains(&v) {
                anyhow::bail!("grants.{what} must be 1 ms to one day, got {v}");
            }
        }
        let b = &self.network.bridge;
        if bulkhead_hostnet::names::check_ifname(b).is_err() {
            anyhow::bail!("network.bridge {b:?} is not a valid interface name (1-15 characters, no '/', ':' or space)");
        }
        let token = self.token()?;
        if self.api.tcp.is_some() && token.is_none() {
            anyhow::bail!("api.tcp needs api.token or api.token_file: the TCP API is never open");
        }
        if let Some(t) = &token {
            if t.len() < MIN_TOKEN_BYTES {
                anyhow::bail!(
                    "api token is {} bytes: at least {MIN_TOKEN_BYTES} needed (e.g. `openssl rand -hex 16`)",
                    t.len()
                );
            }
        }
        if self.api.tls_cert.is_some() != self.api.tls_key.is_some() {
            anyhow::bail!("api.tls_cert and api.tls_key go together");
        }
        let ms = 1..=3_600_000;
        for (k, v) in [
            ("header_timeout_ms", self.api.header_timeout_ms),
            ("idle_timeout_ms", self.api.idle_timeout_ms),
        ] {
            if !ms.contains(&v) {
                anyhow::bail!("api.{k} must be 1-3600000, got {v}");
            }
        }
        if self.api.max_connections == 0 {
            anyhow::bail!("api.max_connections must be at least 1");
        }
        if self.capacity.cpu_overcommit.is_nan() || self.capacity.cpu_overcommit <= 0.0 {
            anyhow::bail!("capacity.cpu_overcommit must be positive");
        }
        for r in &self.storage.roots {
            if !r.is_absolute() {
                anyhow::bail!("storage.roots: {} is not an absolute path", r.display());
            }
        }
        if let Some(p) = &self.store.path {
            if !p.is_absolute() {
                anyhow::bail!("store.path: {} is not an absolute path", p.display());
            }
        }
        if let Some(h) = &self.store.host_id {
            crate::host_id::check(h).map_err(|e| anyhow::anyhow!("store.host_id: {e}"))?;
        }
        if !self.cluster.etcd.is_empty() {
            if self.store.path.is_some() {
                anyhow::bail!(
                    "store.path names a SQLite store; with cluster.etcd it would be unused"
                );
            }
            if let Some(u) = self.cluster.etcd.iter().find(|u| !u.starts_with("http://")) {
                anyhow::bail!(
                    "cluster.etcd: {u:?} is not an http:// URL (TLS to etcd is not supported yet)"
                );
            }
            if !self.cluster.prefix.starts_with('/') {
                anyhow::bail!(
                    "cluster.prefix {:?} must start with '/'",
                    self.cluster.prefix
                );
            }
            if self.cluster.timeout_ms == 0 {
                anyhow::bail!("cluster.timeout_ms must be at least 1");
            }
        }
        if let Some(n) = &self.cluster.name {
            crate::host_id::check(n).map_err(|e| anyhow::anyhow!("cluster.name: {e}"))?;
        }
        if !(1000..=3_600_000).contains(&self.cluster.lease_ms) {
            anyhow::bail!(
                "cluster.lease_ms must be 1000-3600000 (etcd leases are whole seconds), got {}",
                self.cluster.lease_ms
            );
        }
        crate::ha::Timings::of(&self.cluster).check()?;
        if !(1..=0xff_ffff).contains(&self.cluster.vxlan_id) {
            anyhow::bail!(
                "cluster.vxlan_id must be 1-16777215, got {}",
                self.cluster.vxlan_id
            );
        }
        if let Some(a) = &self.cluster.advertise {
            if a.parse::<SocketAddr>().is_err() {
                anyhow::bail!("cluster.advertise {a:?} must be address:port");
            }
        }
        if let Some(i) = &self.cgroup.instance {
            // It names the cgroup subtree and the VLAN's nftables table.
            if i.is_empty()
                || !i
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
            {
                anyhow::bail!("cgroup.instance {i:?} must be letters, digits, '_' and '-'");
            }
        }
        Ok(())
    }

    /// The TCP bearer token, from `token` or `token_file`.
    pub fn token(&self) -> anyhow::Result<Option<String>> {
        if let Some(t) = &self.api.token {
            return Ok(Some(t.clone()));
        }
        match &self.api.token_file {
            Some(p) => {
                let t = std::fs::read_to_string(p)
                    .map_err(|e| anyhow::anyhow!("reading api.token_file {}: {e}", p.display()))?;
                Ok(Some(t.lines().next().unwrap_or("").trim().to_string()))
            }
            None => Ok(None),
        }
    }

    /// Where region files live (`[grants] region_dir`).
    pub fn region_dir(&self) -> PathBuf {
        self.grants.region_dir.clone().unwrap_or_else(|| {
            PathBuf::from(format!("/dev/shm/bulkhead-{}", self.cgroup_instance()))
        })
    }

    /// This daemon's cgroup subtree name, stable across restarts.
    pub fn cgroup_instance(&self) -> String {
        if let Some(i) = &self.cgroup.instance {
            return i.clone();
        }
        let canon = std::fs::canonicalize(&self.data_dir).unwrap_or_else(|_| self.data_dir.clone());
        format!("{:08x}", fnv1a(canon.as_os_str().as_encoded_bytes()) as u32)
    }

    /// The state database's file.
    pub fn store_path(&self) -> PathBuf {
        self.store
            .path
            .clone()
            .unwrap_or_else(|| self.data_dir.join("state.db"))
    }

    /// The LU repository's directory (`cluster.repository`).
    pub fn repository_dir(&self) -> PathBuf {
        self.cluster
            .repository
            .clone()
            .unwrap_or_else(|| self.data_dir.join("repository"))
    }

    /// The storage roots as configured (the default when none are).
    pub fn storage_roots(&self) -> Vec<PathBuf> {
        if self.storage.roots.is_empty() {
            vec![self.data_dir.join("storage")]
        } else {
            self.storage.roots.clone()
        }
    }

    pub fn gateway(&self) -> Ipv4Addr {
        // validate() checked the subnet.
        crate::net::Subnet::parse(&self.network.subnet)
            .map(|s| s.gateway())
            .unwrap_or(Ipv4Addr::UNSPECIFIED)
    }
}

/// A small stable hash (FNV-1a), for names derived from paths.
pub fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf29ce484222325;
    for b in bytes {
        h ^= *b as u64;
        h = h.wrapping_mul(0x100000001b3);
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        Config::default().validate().unwrap();
    }

    #[test]
    fn file_overrides_and_rejects_unknown_keys() {
        let c = Config::parse(
            "data_dir = '/tmp/x'\n[network]\nbridge = 'br9'\nsubnet = '10.9.0.0/24'\n[capacity]\ncpu_overcommit = 2.0\n",
        )
        .unwrap();
        assert_eq!(c.network.bridge, "br9");
        assert_eq!(c.capacity.cpu_overcommit, 2.0);
        assert_eq!(c.capacity.memory_reserve_mib, 1024);
        assert!(Config::parse("[network]\nbrige = 'x'\n").is_err());
    }

    #[test]
    fn cluster_store_settings_are_checked() {
        let c = Config::parse("[cluster]\netcd = ['http://a.example.org:2379']\n").unwrap();
        c.validate().unwrap();
        assert_eq!(c.cluster.prefix, "/bulkhead/v1");
        for (extra, words) in [
            ("etcd = ['https://a.example.org:2379']", "not an http://"),
            ("etcd = ['a.example.org:2379']", "not an http://"),
            (
                "etcd = ['http://a:1']\nprefix = 'rel'",
                "must start with '/'",
            ),
            ("etcd = ['http://a:1']\ntimeout_ms = 0", "at least 1"),
        ] {
            let c = Config::parse(&format!("[cluster]\n{extra}\n")).unwrap();
            let e = c.validate().unwrap_err().to_string();
            assert!(e.contains(words), "{extra}: {e}");
        }
        let both = "[store]\npath = '/s.db'\n[cluster]\netcd = ['http://a:1']\n";
        let e = Config::parse(both).unwrap().validate().unwrap_err();
        assert!(e.to_string().contains("unused"), "{e}");
    }

    #[test]
    fn cluster_membership_settings_are_checked() {
        let c = Config::parse(
            "[cluster]\nname = 'a'\nunderlay = '192.0.2.1'\nadvertise = '192.0.2.1:7070'\n",
        )
        .unwrap();
        c.validate().unwrap();
        assert_eq!((c.cluster.lease_ms, c.cluster.vxlan_id), (5000, 7700));
        for (extra, words) in [
            ("name = 'a b'", "cluster.name"),
            ("lease_ms = 10", "lease_ms"),
            ("lease_ms = 3000\nself_fence_ms = 3600", "self_fence_ms"),
            ("lease_ms = 3000\nself_fence_ms = 900", "renewal"),
            (
                "takeover_margin_ms = 0\nself_fence_ms = 4900",
                "self_fence_ms",
            ),
            ("vxlan_id = 0", "vxlan_id"),
            ("vxlan_id = 16777216", "vxlan_id"),
            ("advertise = 'nowhere'", "address:port"),
        ] {
            let c = Config::parse(&format!("[cluster]\n{extra}\n")).unwrap();
            let e = c.validate().unwrap_err().to_string();
            assert!(e.contains(words), "{extra}: {e}");
        }
        assert!(Config::parse("[cluster]\nunderlay = 'x'\n").is_err());
    }

    #[test]
    fn tcp_without_token_is_refused() {
        let c = Config::parse("[api]\ntcp = '127.0.0.1:1'\n").unwrap();
        assert!(c.validate().unwrap_err().to_string().contains("token"));
        for t in ["", "short", "fifteen-bytes!!"] {
            let c = Config::parse(&format!("[api]\ntcp = '127.0.0.1:1'\ntoken = {t:?}\n")).unwrap();
            let e = c.validate().unwrap_err().to_string();
            assert!(e.contains("at least 16"), "{t:?}: {e}");
        }
        let c = Config::parse("[api]\ntcp = '127.0.0.1:1'\ntoken = 'sixteen-bytes!!!'\n").unwrap();
        c.validate().unwrap();
        let c = Config::parse("[api]\ntls_cert = '/c.pem'\n").unwrap();
        assert!(c.validate().is_err());
        let c = Config::parse("[api]\nheader_timeout_ms = 0\n").unwrap();
        assert!(c.validate().is_err());
        let c = Config::parse("[network]\nbridge = 'much-too-long-name'\n").unwrap();
        assert!(c.validate().is_err());
        let c = Config::parse("[network]\nsubnet = '10.0.0.0/33'\n").unwrap();
        assert!(c.validate().is_err());
    }
}
