//! The partitions' own calls (`bulkhead-guest`, relayed by their agent): each
//! is parsed with the guests' parser and answered by the same handler as the
//! API's on-behalf call, the asking partition being the one whose channel it
//! came on.

use std::sync::{Arc, Weak};

use bulkhead_agent::proto::call_kind;
use bulkhead_agent::{GuestCall, WireError};
use bulkhead_engine::Partition;
use bulkhead_grant::request::parse_request;

use super::Via;
use crate::api::ApiError;
use crate::manager::Manager;

/// The agent's error for an API error: a refusal keeps its own kind.
pub fn wire_error(e: &ApiError) -> WireError {
    let kind = match e {
        ApiError::Grant(g) => g.kind().as_str(),
        // The guest's own doing: a bad value, an unknown partition, no room.
        ApiError::BadRequest(_) | ApiError::NotFound(_) | ApiError::OverCapacity(_) => {
            call_kind::BAD_REQUEST
        }
        ApiError::Conflict(_)
        | ApiError::Engine(_)
        | ApiError::Unavailable(_)
        | ApiError::RequestTimeout(_) => call_kind::UNAVAILABLE,
        _ => call_kind::INTERNAL,
    };
    WireError::new(kind, e.to_string())
}

impl Manager {
    /// Answers one call of partition `name`.
    pub(crate) async fn serve_guest_call(self: &Arc<Self>, name: &str, call: GuestCall) {
        let result = match parse_request(&call.request) {
            Err(e) => Err(WireError::new(call_kind::BAD_REQUEST, e.to_string())),
            Ok(req) => match self.grant_request(name, Via::Guest, req).await {
                Ok(reply) => serde_json::to_value(reply)
                    .map_err(|e| WireError::new(call_kind::INTERNAL, e.to_string())),
                Err(e) => Err(wire_error(&e)),
            },
        };
        call.reply(result);
    }
}

/// Takes `partition`'s calls (when started or adopted) and serves each in a
/// task of its own until its agent connection ends.
pub(crate) fn serve_calls(m: &Arc<Manager>, name: &str, partition: &Partition) {
    let Some(mut rx) = partition.agent().take_calls() else {
        return;
    };
    let (m, name): (Weak<Manager>, String) = (Arc::downgrade(m), name.to_string());
    tokio::spawn(async move {
        while let Some(call) = rx.recv().await {
            let Some(m) = m.upgrade() else { break };
            let name = name.clone();
            tokio::spawn(async move { m.serve_guest_call(&name, call).await });
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use bulkhead_grant::GrantError;

    #[test]
    fn refusals_keep_their_kind_on_the_wire() {
        let w = wire_error(&ApiError::Grant(GrantError::CookieUsed));
        assert_eq!(w.kind, "cookie_used");
        assert_eq!(
            wire_error(&ApiError::BadRequest("x".into())).kind,
            "bad_request"
        );
        assert_eq!(
            wire_error(&ApiError::Conflict("x".into())).kind,
            "unavailable"
        );
        assert_eq!(wire_error(&ApiError::Internal("x".into())).kind, "internal");
    }
}
