//! The resource server's devices: taken for a call or an armed request, given back as
//! soon as the modem has confirmed the hang-up; a request that finds every device busy
//! waits a moment for one instead of being refused at once.

use std::sync::Mutex;
use std::time::Duration;

use bulkhead_l2tp::result::*;
use bulkhead_l2tp::ResultCode;
use bulkhead_modem::dte::{Dte, DteError};
use tracing::warn;

use crate::profile::Device;

/// One device: its profile entry and, while free, its modem.
pub(crate) struct Slot {
    pub(crate) cfg: Device,
    /// `None` while a call or an armed request holds the device.
    pub(crate) dte: Option<Dte>,
    /// Its call is over and the modem is hanging up: free in a moment.
    pub(crate) releasing: bool,
}

/// How long a request waits for a device when all are busy in calls: the call that
/// just ended may not have reached its device's task yet.
pub(crate) const BUSY_GRACE: Duration = Duration::from_secs(1);
/// How long a request waits for a device that is hanging up.
pub(crate) const RELEASE_WAIT: Duration = Duration::from_secs(10);

/// The modem's state when a call or request gives it back.
#[derive(Debug, Clone, Copy)]
pub(crate) enum After {
    /// Still off hook (or dialing): hang up.
    Online,
    /// In command mode and in step.
    Idle,
    /// Unknown: reset it.
    Unknown,
}

/// Every device of the server, each free (its modem in the slot) or held.
pub(crate) struct Pool {
    slots: Mutex<Vec<Slot>>,
    /// Told whenever a device comes back to the pool.
    freed: tokio::sync::Notify,
}

/// A device taken from the pool; give it back with [`Pool::put_back`].
pub(crate) struct Taken {
    pub(crate) index: usize,
    pub(crate) name: String,
    pub(crate) dial_timeout: Duration,
    pub(crate) dte: Dte,
}

impl Pool {
    pub(crate) fn new(slots: Vec<Slot>) -> Pool {
        Pool {
            slots: Mutex::new(slots),
            freed: tokio::sync::Notify::new(),
        }
    }

    /// The modem of device `i`, taken for good (a device that forwards its rings).
    pub(crate) fn take_index(&self, i: usize) -> Option<Dte> {
        self.slots.lock().expect("pool lock")[i].dte.take()
    }

    /// Takes a device for `want`; when every such device is busy, waits a moment for
    /// one to come free ([`BUSY_GRACE`], or [`RELEASE_WAIT`] while one hangs up)
    /// before giving up with CDN 4.
    pub(crate) async fn take_wait(
        &self,
        want: impl Fn(&Device) -> bool,
    ) -> Result<Taken, ResultCode> {
        let start = tokio::time::Instant::now();
        loop {
            let freed = self.freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            let rc = match self.take(&want) {
                Ok(t) => return Ok(t),
                Err(rc) if rc.result == CDN_NO_FACILITIES_TEMP => rc,
                Err(rc) => return Err(rc),
            };
            let releasing = self
                .slots
                .lock()
                .expect("pool lock")
                .iter()
                .any(|s| s.releasing && want(&s.cfg));
            let deadline = start + if releasing { RELEASE_WAIT } else { BUSY_GRACE };
            if tokio::time::Instant::now() >= deadline {
                return Err(rc);
            }
            let _ = tokio::time::timeout_at(deadline, freed).await;
        }
    }

    fn take(&self, want: impl Fn(&Device) -> bool) -> Result<Taken, ResultCode> {
        let mut slots = self.slots.lock().expect("pool lock");
        let mut exists = false;
        for (i, s) in slots.iter_mut().enumerate() {
            if want(&s.cfg) && s.cfg.forward_incoming.is_none() {
                exists = true;
                if let Some(dte) = s.dte.take() {
                    return Ok(Taken {
                        index: i,
                        name: s.cfg.name.clone(),
                        dial_timeout: Duration::from_secs(s.cfg.dial_timeout),
                        dte,
                    });
                }
            }
        }
        Err(if exists {
            ResultCode::new(
                CDN_NO_FACILITIES_TEMP,
                ERR_NO_RESOURCES,
                "all devices are in use",
            )
        } else {
            ResultCode::new(
                CDN_NO_FACILITIES_PERM,
                ERR_NONE,
                "no device takes this kind of call",
            )
        })
    }

    /// Gives the device back as soon as its modem is on hook and in step.
    pub(crate) async fn put_back(&self, mut t: Taken, after: After) {
        self.slots.lock().expect("pool lock")[t.index].releasing = true;
        settle(&mut t, after).await;
        let mut slots = self.slots.lock().expect("pool lock");
        slots[t.index].dte = Some(t.dte);
        slots[t.index].releasing = false;
        drop(slots);
        self.freed.notify_waiters();
    }
}

/// Brings a modem back on hook and in step after a call or request.
pub(crate) async fn settle(t: &mut Taken, after: After) {
    let r = match after {
        After::Online => t.dte.hangup().await,
        After::Idle => Ok(()),
        After::Unknown => Err(bulkhead_modem::dte::DteError::Timeout("state".into())),
    };
    if let Err(e) = r {
        if !matches!(after, After::Unknown) {
            warn!(
                device = t.name,
                "modem did not hang up cleanly: {e}; resetting it"
            );
        }
        if let Err(e) = t.dte.init().await {
            warn!(device = t.name, "modem did not reset after the call: {e}");
        }
    }
}

/// What a failed dial or answer leaves the modem in.
pub(crate) fn after_failure(e: &DteError) -> After {
    match e {
        // A result code: the modem is in command mode, in step.
        DteError::Result(_) => After::Idle,
        // Still dialing or answering, perhaps: hang up.
        DteError::Timeout(_) => After::Online,
        DteError::Io(_) => After::Unknown,
    }
}
