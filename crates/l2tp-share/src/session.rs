//! A session's queues between the tunnel's task ([`crate::driver`]) and the session's
//! owner: data in a bounded queue, events in their own, so that a hang-up never waits
//! for room behind data and an owner that stops reading costs a bounded amount.

use std::time::{Duration, Instant};

use bulkhead_l2tp::Event;
use tokio::sync::mpsc;
use tracing::{debug, warn};

/// Data messages a session's owner may leave unread before the tunnel stops reading.
pub const SESSION_DATA_QUEUE: usize = 64;
/// How long a session's full queue may hold the tunnel's datagrams back; after that
/// its data is dropped while the queue stays full (the peer retransmits control
/// messages after 1 s and gives up after about 30 s).
pub const DATA_STALL_LIMIT: Duration = Duration::from_secs(1);
/// A session's events: a handful per call, plus WEN/SLI, which a peer may repeat.
const SESSION_EVENT_QUEUE: usize = 32;
/// Queue room kept for the lifecycle events (at most five per call): WEN and SLI are
/// dropped rather than take it.
const LIFECYCLE_ROOM: usize = 8;

/// What a session's owner receives.
#[derive(Debug)]
pub enum SessionMsg {
    Event(Event),
    Data(Vec<u8>),
}

/// A session's events and data, for its owner.
#[derive(Debug)]
pub struct SessionRx {
    events: mpsc::Receiver<Event>,
    data: mpsc::Receiver<Vec<u8>>,
    /// The call's end, held until the data that arrived before it has been read.
    end: Option<Event>,
}

impl SessionRx {
    /// The next event or data message; `None` once the session is gone. Events come
    /// first, except the call's end, which comes after the data received before it.
    /// Cancel-safe.
    pub async fn recv(&mut self) -> Option<SessionMsg> {
        loop {
            if self.end.is_some() {
                // The driver dropped the data sender with the end: this drains.
                return match self.data.recv().await {
                    Some(d) => Some(SessionMsg::Data(d)),
                    None => self.end.take().map(SessionMsg::Event),
                };
            }
            tokio::select! {
                biased;
                Some(e) = self.events.recv() => match e {
                    Event::CallDisconnected { .. } => self.end = Some(e),
                    e => return Some(SessionMsg::Event(e)),
                },
                Some(d) = self.data.recv() => return Some(SessionMsg::Data(d)),
                else => return None,
            }
        }
    }

    /// Data messages received for the session and not read yet (at most
    /// [`SESSION_DATA_QUEUE`]).
    pub fn len(&self) -> usize {
        self.data.len()
    }

    /// No data waiting (events may be).
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }
}

/// The driver's end of a session.
pub(crate) struct SessionTx {
    events: mpsc::Sender<Event>,
    pub(crate) data: mpsc::Sender<Vec<u8>>,
    /// Since when the data queue has been full without draining to half.
    pub(crate) full_since: Option<Instant>,
}

pub(crate) fn session_channel() -> (SessionTx, SessionRx) {
    let (etx, erx) = mpsc::channel(SESSION_EVENT_QUEUE);
    let (dtx, drx) = mpsc::channel(SESSION_DATA_QUEUE);
    let tx = SessionTx {
        events: etx,
        data: dtx,
        full_since: None,
    };
    let rx = SessionRx {
        events: erx,
        data: drx,
        end: None,
    };
    (tx, rx)
}

impl SessionTx {
    pub(crate) fn event(&self, e: Event) {
        let informational = matches!(e, Event::WanErrors { .. } | Event::LinkInfo { .. });
        if informational && self.events.capacity() <= LIFECYCLE_ROOM {
            debug!("session owner is not reading: dropped {e:?}");
            return;
        }
        if let Err(mpsc::error::TrySendError::Full(e)) = self.events.try_send(e) {
            warn!("session event queue full: dropped {e:?}");
        }
    }
}
