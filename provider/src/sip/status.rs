//! Between the invitation protocol's outcomes and SIP statuses: the status a Reject reason
//! becomes and back, the failure a forked INVITE reports, and the SIP answer to a refused
//! request ([`Refusal`]), from the protocol's refusal codes or a database failure.

use rsip::Header;
use switchyard_calls::{CallError, RefusalCode};
use switchyard_protocol::invitation::RejectReason;

/// A refusal: status, reason phrase and extra headers.
pub struct Refusal(pub u16, pub String, pub Vec<Header>);

pub fn refuse(status: u16, reason: impl Into<String>) -> Refusal {
    Refusal(status, reason.into(), Vec::new())
}

/// The SIP status a Reject reason becomes, and back.
pub fn status_of_reason(reason: &str) -> (u16, &'static str) {
    match reason {
        "busy" => (486, "Busy Here"),
        "declined" => (603, "Decline"),
        "unsupported-media" => (488, "Not Acceptable Here"),
        "not-authorized" => (403, "Forbidden"),
        _ => (480, "Temporarily Unavailable"),
    }
}

pub fn reason_of_status(status: u16) -> RejectReason {
    match status {
        486 | 600 => RejectReason::Busy,
        603 => RejectReason::Declined,
        488 | 606 => RejectReason::UnsupportedMedia,
        401 | 403 | 407 => RejectReason::NotAuthorized,
        _ => RejectReason::Unavailable,
    }
}

/// Of several final failures of a forked INVITE, the one to report (RFC 3261 §16.7 step 6,
/// simplified: a 6xx wins, then the most specific 4xx over 5xx and timeouts).
pub fn best_failure(statuses: &[u16]) -> u16 {
    let rank = |s: u16| match s {
        600..=699 => 0,
        486 | 488 | 403 => 1,
        400..=499 if s != 408 => 2,
        _ => 3,
    };
    statuses
        .iter()
        .copied()
        .min_by_key(|s| rank(*s))
        .unwrap_or(480)
}

pub fn db_refusal(e: crate::db::StoreError) -> Refusal {
    tracing::error!(error = %e, "SIP edge: database");
    Refusal(500, "Database Unavailable".into(), vec![])
}

/// The SIP answer to a refused Initiate Request: from the protocol's refusal code, as the
/// endpoint API answers it over HTTP from the same code (`wire::http_status`).
pub fn refusal_of(e: &CallError) -> Refusal {
    let (status, reason) = match e {
        CallError::Refused(refusal) => match refusal.code {
            RefusalCode::UnknownPeer => (404, "Not Found"),
            RefusalCode::NotAuthorized => (403, "Forbidden"),
            RefusalCode::DuplicateSession => (482, "Loop Detected"),
            code if crate::wire::http_status(code).is_server_error() => {
                (503, "Service Unavailable")
            }
            _ => (403, "Forbidden"),
        },
        CallError::Store(_) => (503, "Service Unavailable"),
    };
    Refusal(status, reason.into(), vec![])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_and_statuses_map_both_ways() {
        for reason in RejectReason::ALL {
            let (status, _) = status_of_reason(reason.as_str());
            assert_eq!(reason_of_status(status), *reason, "{reason}");
        }
        assert_eq!(reason_of_status(408), RejectReason::Unavailable);
        assert_eq!(reason_of_status(600), RejectReason::Busy);
    }

    #[test]
    fn the_best_failure_of_a_fork_is_reported() {
        assert_eq!(best_failure(&[408, 486]), 486);
        assert_eq!(best_failure(&[486, 603]), 603);
        assert_eq!(best_failure(&[408, 503]), 408);
        assert_eq!(best_failure(&[404, 408]), 404);
    }
}
