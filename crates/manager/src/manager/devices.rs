//! Host devices a partition owns (issue 15): its serial lines are checked
//! and claimed at create (released with the record at destroy), opened for
//! its QEMU at every start, and the L2TP resource server the record
//! configures is started by its agent before the partition counts as ready.

use super::*;
use crate::devices;

/// How long the agent may take to start the server and see it listen
/// (a static binary starting under TCG on a loaded host).
const SERVICE_WAIT: Duration = Duration::from_secs(30);

impl Manager {
    /// The create's devices with canonical paths, checked (400 otherwise).
    pub(super) async fn checked_devices(
        &self,
        c: &CreatePartition,
    ) -> Result<bulkhead_store::PartitionDevices, ApiError> {
        let (d, net) = (c.devices.clone(), c.net);
        // Opens device nodes: off the reactor.
        tokio::task::spawn_blocking(move || devices::check(&d, net))
            .await
            .map_err(internal)?
            .map_err(ApiError::BadRequest)
    }

    /// The serial lines of a start: each still the tty it was at create.
    pub(super) fn check_serials(
        &self,
        rec: &PartitionRecord,
        spec: &mut PartitionSpec,
    ) -> Result<(), ApiError> {
        spec.serials.clear();
        for p in &rec.devices.serial {
            let canon = bulkhead_engine::serial::check_device(Path::new(p))
                .map_err(|e| ApiError::BadRequest(format!("serial device: {e}")))?;
            if canon != Path::new(p) {
                return Err(ApiError::BadRequest(format!(
                    "serial device {p} now resolves to {}; destroy and create the partition again",
                    canon.display()
                )));
            }
            spec.serials
                .push(bulkhead_engine::serial::SerialSpec { path: canon });
        }
        Ok(())
    }

    /// What the agent starts once it answered: the L2TP resource server on
    /// the partition's VLAN address. An error fails the start.
    pub(super) async fn start_device_services(
        &self,
        name: &str,
        partition: &Partition,
    ) -> Result<(), String> {
        let rec = self.get(name).await.map_err(|e| e.to_string())?;
        let Some(l) = &rec.devices.l2tp_server else {
            return Ok(());
        };
        let ip = rec
            .net
            .as_ref()
            .and_then(|n| net::addr_of(&n.ip))
            .map(std::net::IpAddr::V4)
            .ok_or("the L2TP server needs the partition's VLAN address, and it has none")?;
        let profile = devices::server_profile(name, ip, rec.devices.serial.len(), l);
        let listen = std::net::SocketAddr::new(ip, l.port.unwrap_or(devices::L2TP_PORT));
        let started = partition
            .agent()
            .l2tp_server(&profile, listen, SERVICE_WAIT)
            .await
            .map_err(|e| format!("starting the L2TP server: {e}"))?;
        tracing::info!(partition = name, pid = started.pid, %listen, "L2TP server started");
        let ev = format!("L2TP server listening on {listen}");
        self.modify(name, &ev, |_| {})
            .await
            .map_err(|e| e.to_string())?;
        Ok(())
    }
}

/// The create's admission, which also keeps each serial line to one
/// partition of the host.
pub(super) fn with_claims(check: Admission) -> Admission {
    Arc::new(move |others, rec| {
        devices::check_claim(others, rec)?;
        check(others, rec)
    })
}

/// A store refusal as the API answers it: a held line is a conflict.
pub(super) fn refused(e: StoreError) -> ApiError {
    match e {
        StoreError::Refused { reason, .. } if devices::is_held(&reason) => {
            ApiError::Conflict(reason)
        }
        e => refused_is_capacity(e),
    }
}
