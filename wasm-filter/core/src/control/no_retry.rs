//! "Do not retry" carried up a chain through the applications.
//!
//! A hop that sheds a request by its class's share, or finds its deadline
//! spent, answers with `x-envoy-ratelimited`, and the caller's Envoy does not
//! retry it (a shed with every slot taken may be retried once there). But the
//! caller's application answers its own caller with a plain 5xx, and that
//! Envoy would retry the whole subtree into the same overloaded service: a
//! product page shed at ratings came back as up to three tries of reviews,
//! each calling ratings again. Applications forward `x-request-id` (as they
//! must for tracing), so the sidecar's outbound side marks the request id
//! whose upstream was overloaded (see [`marks`]), and the inbound side,
//! seeing the application fail that same request, passes the header on.
//!
//! The marks live in the proxy's shared data, which every worker's VM sees
//! (the application's outbound call may land on another worker than its
//! inbound request). A fixed ring of slots bounds them: a mark overwritten
//! before it is read only means one retry is made as before.

/// Slots in the ring of marks.
pub const SLOTS: u64 = 64;

/// The header Envoy's router honours: it never retries a response that
/// carries it unless the route retries on `envoy-ratelimited`.
pub const HEADER: &str = "x-envoy-ratelimited";

/// The request id applications forward, which keys a mark.
pub const REQUEST_ID_HEADER: &str = "x-request-id";

/// What meshtune's own answers carry (`shed`, `deadline_exceeded`).
pub const REASON_HEADER: &str = "x-meshtune-reason";

/// Whether a failed upstream response (its headers seen through `has`)
/// marks the request: it asked not to be retried, or a meshtune filter
/// answered it (a shed or a spent deadline, also one whose immediate retry
/// was allowed). Retrying overload is the business of the layer right above
/// it only: once the application fails the request anyway, the layers
/// above would each retry the whole subtree into the same overload.
pub fn marks(has: &dyn Fn(&str) -> bool) -> bool {
    has(HEADER) || has(REASON_HEADER)
}

/// A request id's 64-bit FNV-1a hash: what a mark stores (a request's own
/// id, not a slot's, so a collision in the ring cannot mark another).
pub fn request_key(request_id: &[u8]) -> u64 {
    request_id.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// The shared-data key of the slot for `key`.
pub fn slot_name(key: u64) -> String {
    format!("meshtune.no_retry.{}", key % SLOTS)
}

/// What a mark stores in its slot.
pub fn mark(key: u64) -> [u8; 8] {
    key.to_le_bytes()
}

/// Whether `stored` (a slot's value) marks `key`.
pub fn is_marked(stored: &[u8], key: u64) -> bool {
    stored == key.to_le_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_mark_is_read_back_for_its_request_only() {
        let a = request_key(b"7f3c9a52-1111-4c1e-9d7e-000000000001");
        let b = request_key(b"7f3c9a52-1111-4c1e-9d7e-000000000002");
        assert_ne!(a, b);
        assert!(is_marked(&mark(a), a));
        assert!(!is_marked(&mark(a), b));
        assert!(!is_marked(b"", a), "an empty slot marks nothing");
    }

    #[test]
    fn overload_answers_mark_and_other_failures_do_not() {
        let with = |names: &'static [&'static str]| move |n: &str| names.contains(&n);
        assert!(marks(&with(&["x-envoy-ratelimited"])));
        assert!(
            marks(&with(&["x-meshtune-reason"])),
            "a retriable shed still marks"
        );
        assert!(
            !marks(&with(&["x-envoy-upstream-service-time"])),
            "an application's 503"
        );
    }

    #[test]
    fn ids_spread_over_the_slots() {
        let mut used = std::collections::HashSet::new();
        for i in 0..1000 {
            used.insert(slot_name(request_key(format!("req-{i}").as_bytes())));
        }
        assert_eq!(used.len() as u64, SLOTS);
    }
}
