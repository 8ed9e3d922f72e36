//! Deadline budgets. The entry hop stamps an absolute deadline (Unix
//! milliseconds) from the chain's budget; every hop gives its upstream at
//! most what is left minus a reserve, and forwards nothing once the budget
//! is spent. An absolute deadline survives the application copying the
//! header to its outbound calls, which a "remaining" value would not.

/// Header carrying the chain's deadline, Unix time in milliseconds.
pub const DEADLINE_HEADER: &str = "x-meshtune-deadline";
/// Envoy's router takes the upstream timeout from this header.
pub const TIMEOUT_HEADER: &str = "x-envoy-upstream-rq-timeout-ms";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeadlineDecision {
    /// Forward; set the upstream timeout when `Some`.
    Forward { timeout_ms: Option<u64> },
    /// The budget is spent: answer at once, do not forward.
    Expired { late_ms: u64 },
}

/// Decides a hop. `existing_timeout_ms` is an upstream timeout the request
/// already carries (never raised); `hop_cap_ms` the chain's cap for this service.
pub fn decide(
    deadline_ms: Option<u64>,
    now_ms: u64,
    reserve_ms: u64,
    hop_cap_ms: Option<u64>,
    existing_timeout_ms: Option<u64>,
) -> DeadlineDecision {
    let Some(deadline) = deadline_ms else {
        return DeadlineDecision::Forward { timeout_ms: None };
    };
    let remaining = deadline.saturating_sub(now_ms);
    if remaining <= reserve_ms {
        return DeadlineDecision::Expired {
            late_ms: now_ms.saturating_sub(deadline.saturating_sub(reserve_ms)),
        };
    }
    let mut t = remaining - reserve_ms;
    if let Some(cap) = hop_cap_ms {
        t = t.min(cap.max(1));
    }
    if let Some(e) = existing_timeout_ms.filter(|e| *e > 0) {
        t = t.min(e);
    }
    DeadlineDecision::Forward {
        timeout_ms: Some(t),
    }
}

/// Parses a deadline header value; garbage counts as no deadline (fail open).
pub fn parse_deadline(v: &[u8]) -> Option<u64> {
    std::str::from_utf8(v).ok()?.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_deadline_forwards_untouched() {
        assert_eq!(
            decide(None, 100, 2, None, None),
            DeadlineDecision::Forward { timeout_ms: None }
        );
    }

    #[test]
    fn timeout_is_the_remaining_budget_minus_the_reserve_capped() {
        assert_eq!(
            decide(Some(1_000), 900, 5, None, None),
            DeadlineDecision::Forward {
                timeout_ms: Some(95)
            }
        );
        assert_eq!(
            decide(Some(1_000), 900, 5, Some(40), None),
            DeadlineDecision::Forward {
                timeout_ms: Some(40)
            }
        );
        assert_eq!(
            decide(Some(1_000), 900, 5, None, Some(30)),
            DeadlineDecision::Forward {
                timeout_ms: Some(30)
            }
        );
    }

    #[test]
    fn spent_budgets_are_not_forwarded() {
        assert_eq!(
            decide(Some(1_000), 996, 5, None, None),
            DeadlineDecision::Expired { late_ms: 1 }
        );
        assert_eq!(
            decide(Some(1_000), 1_200, 0, None, None),
            DeadlineDecision::Expired { late_ms: 200 }
        );
    }

    #[test]
    fn garbage_headers_mean_no_deadline() {
        assert_eq!(parse_deadline(b"1700000000123"), Some(1_700_000_000_123));
        assert_eq!(parse_deadline(b"soon"), None);
        assert_eq!(parse_deadline(&[0xff, 0xfe]), None);
    }
}
