//! High-priority requests waiting at the concurrency limit for a slot.
//!
//! A `high` request the limit refuses (every slot taken) waits, its stream
//! paused, while fewer requests wait than the limit has slots, instead of
//! being shed: the slots free about once per uncongested service time each,
//! so it waits about one service time, well inside objectives several
//! service times long, and a finished request's slot goes to it before any
//! new arrival. Lower classes are shed as before: a waiting request takes a
//! freed slot at once, so lower classes waiting would keep the service's
//! own queue at its fullest and delay the `high` requests behind it (on
//! the `alibaba` scenario every class waiting gave the high chain 3–4
//! violating windows where shedding gave 1–2), and the reserve the class
//! shares keep exists for `high` alone.
//!
//! No timer is needed: a request waits only while others are in flight
//! (the limit is at least one), and each of them that finishes admits the
//! oldest waiting request if the limit has room.

use crate::control::concurrency::AdaptiveLimit;
use crate::control::priority::Priority;
use std::collections::VecDeque;

/// Streams waiting, oldest first, and the streams admitted from them (with
/// when) until they finish.
#[derive(Debug, Default, Clone)]
pub struct WaitQueue {
    waiting: VecDeque<u32>,
    admitted: Vec<(u32, u64)>,
    /// Requests that waited since the stats last took the count.
    waited: u64,
}

/// What a finishing stream had from the queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Left {
    /// Still waiting when it ended (its client went away): it held no slot.
    Waiting,
    /// Admitted from the queue at this time: it held a slot from then.
    Admitted { at_ns: u64 },
    /// Never waited here.
    Unknown,
}

impl WaitQueue {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn len(&self) -> usize {
        self.waiting.len()
    }

    pub fn is_empty(&self) -> bool {
        self.waiting.is_empty()
    }

    /// Lets stream `id` of class `p`, just refused by `limit`, wait; `false`
    /// (shed it) for a class below `high`, or when as many wait as the
    /// limit has slots.
    pub fn offer(&mut self, id: u32, p: Priority, limit: &AdaptiveLimit) -> bool {
        if p != Priority::High || self.len() + 1 > limit.room(p) {
            return false;
        }
        self.waiting.push_back(id);
        self.waited += 1;
        true
    }

    /// Requests that waited since the last call (for a stats counter).
    pub fn take_waited(&mut self) -> u64 {
        std::mem::take(&mut self.waited)
    }

    /// Admits the oldest waiting stream if the limit has room (counting it
    /// in flight from `now_ns`).
    pub fn admit_next(&mut self, limit: &mut AdaptiveLimit, now_ns: u64) -> Option<u32> {
        if self.waiting.is_empty() || !limit.try_admit_waiting(Priority::High) {
            return None;
        }
        let id = self.waiting.pop_front()?;
        self.admitted.push((id, now_ns));
        Some(id)
    }

    /// Stream `id` finished (or its client went away): forgets it.
    pub fn leave(&mut self, id: u32) -> Left {
        if let Some(i) = self.admitted.iter().position(|(a, _)| *a == id) {
            let (_, at_ns) = self.admitted.swap_remove(i);
            return Left::Admitted { at_ns };
        }
        if let Some(i) = self.waiting.iter().position(|w| *w == id) {
            self.waiting.remove(i);
            return Left::Waiting;
        }
        Left::Unknown
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::concurrency::{Admission, ConcurrencyConfig};

    /// A limit of `n` slots, measured (so class shares apply), all taken
    /// by high requests.
    fn full_limit(n: u32) -> AdaptiveLimit {
        let mut limit = AdaptiveLimit::new(ConcurrencyConfig {
            initial_limit: n,
            min_limit: n,
            max_limit: n,
            sample_window: 1,
            ..ConcurrencyConfig::default()
        });
        assert_eq!(limit.try_acquire(Priority::High), Admission::Admit);
        limit.release("c", 1_000_000);
        for _ in 0..n {
            assert_eq!(limit.try_acquire(Priority::High), Admission::Admit);
        }
        limit
    }

    #[test]
    fn only_high_waits_and_no_more_than_the_limit_has_slots() {
        let limit = full_limit(4);
        let mut q = WaitQueue::new();
        assert!(!q.offer(1, Priority::Low, &limit));
        assert!(!q.offer(2, Priority::Normal, &limit));
        for id in 3..7 {
            assert!(q.offer(id, Priority::High, &limit));
        }
        assert!(!q.offer(7, Priority::High, &limit));
        assert_eq!((q.len(), q.take_waited()), (4, 4));
        assert_eq!(q.take_waited(), 0, "counted once");
    }

    #[test]
    fn a_freed_slot_goes_to_the_oldest_waiter() {
        let mut limit = full_limit(4);
        let mut q = WaitQueue::new();
        assert!(q.offer(2, Priority::High, &limit));
        assert!(q.offer(3, Priority::High, &limit));
        assert_eq!(q.admit_next(&mut limit, 7), None, "no slot free yet");
        limit.release("c", 1_000_000);
        assert_eq!(q.admit_next(&mut limit, 8), Some(2));
        assert_eq!(q.admit_next(&mut limit, 8), None, "the limit is full again");
        limit.release("c", 1_000_000);
        assert_eq!(q.admit_next(&mut limit, 9), Some(3));
        assert_eq!(limit.inflight(), 4);
        assert_eq!(q.leave(2), Left::Admitted { at_ns: 8 });
        assert_eq!(q.leave(3), Left::Admitted { at_ns: 9 });
        assert_eq!(q.leave(2), Left::Unknown, "forgotten once left");
    }

    #[test]
    fn a_waiter_whose_client_left_is_removed_without_a_slot() {
        let mut limit = full_limit(2);
        let mut q = WaitQueue::new();
        assert!(q.offer(1, Priority::High, &limit));
        assert!(q.offer(2, Priority::High, &limit));
        assert_eq!(q.leave(1), Left::Waiting);
        limit.release("c", 1_000_000);
        assert_eq!(q.admit_next(&mut limit, 5), Some(2));
        assert!(q.is_empty());
    }
}
