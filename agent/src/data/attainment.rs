//! SLO attainment the way users judge it, in one place: the share of the
//! requests a chain was offered that were answered successfully within the
//! objective. A request that failed (5xx or a local reply), was shed, or got
//! the deadline reply counts against it, however fast it was answered. The
//! API's view, the writer's rollback and the lab's evaluation all use it
//! (aggregates through [`crate::data::aggregate::Agg::attainment`]).

/// Attainment from exact counts: `good` of `offered` requests were
/// answered successfully within the objective. `None` when nothing was offered.
pub fn attainment(offered: u64, good: u64) -> Option<f64> {
    (offered > 0).then(|| good.min(offered) as f64 / offered as f64)
}

/// What one chain's entry hop counted over some time.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EntryCounts {
    /// Requests answered (any status), with their latency recorded.
    pub answered: u64,
    /// Of those, the failed ones (5xx or a local reply from a later hop).
    pub failed: u64,
    /// Requests the entry sidecar answered itself: shed or deadline spent.
    pub answered_locally: u64,
    /// Answered requests at or under the objective's latency.
    pub within_objective: u64,
}

/// Attainment of a chain's entry counts.
///
/// The latency record holds every answered request, failed ones included,
/// and does not say which were failures; counting every failure as one of
/// the requests within the objective gives the lower bound
/// `within − failed`, exact when failures are answered fast (sheds,
/// deadline replies and refused connections are).
pub fn of_entry(c: EntryCounts) -> Option<f64> {
    attainment(
        c.answered + c.answered_locally,
        c.within_objective.saturating_sub(c.failed),
    )
}

/// Whether an attainment meets a chain's declared percentile (p99 means
/// at least 99 % of requests good).
pub fn meets(attainment: f64, percentile: f64) -> bool {
    attainment + 1e-12 >= percentile / 100.0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(fast: u64, slow: u64, failed: u64, local: u64) -> EntryCounts {
        EntryCounts {
            answered: fast + slow,
            failed,
            answered_locally: local,
            within_objective: fast,
        }
    }

    #[test]
    fn fast_failures_and_local_replies_count_against_the_objective() {
        // 100 answered fast, 10 of them 5xx: 90 % good, not 100 %.
        assert_eq!(of_entry(entry(100, 0, 10, 0)), Some(0.9));
        // 80 answered fast, 20 shed or given the deadline reply at the entry: 80 %.
        assert_eq!(of_entry(entry(80, 0, 0, 20)), Some(0.8));
        // Slow successes miss the objective.
        assert_eq!(of_entry(entry(75, 25, 0, 0)), Some(0.75));
        assert_eq!(of_entry(EntryCounts::default()), None);
    }

    #[test]
    fn meeting_the_percentile() {
        assert!(meets(0.99, 99.0));
        assert!(!meets(0.989, 99.0));
        assert!(meets(0.95, 95.0));
    }
}
