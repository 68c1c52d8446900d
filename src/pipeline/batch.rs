//! Batched mode's pure rules: which messages share a POST, and how a rejected batch is split
//! to find the messages the endpoint really rejects.
//!
//! - [`group`]: the messages of one receive, in order, cut into batches of at most
//!   `CE_BATCH_SIZE` entries and `CE_BATCH_MAX_BYTES` bytes of body. An entry too large for
//!   any batch goes alone (a batch of one), so no message is ever stuck.
//! - [`Bisection`]: the outcome of a batched POST is all or nothing — the CloudEvents batched
//!   mode has no per-entry status. A 2xx covers every entry, a retryable failure sends every
//!   message to a retry (each with its own attempt count), but a permanent failure (400 and the
//!   other permanent 4xx) is most likely about *one* entry, so the batch is split in halves and
//!   each half is sent again, down to single entries: only what the endpoint rejects on its own
//!   is poisoned. A half that fails retryably while bisecting is not split further: its messages
//!   are retried, and a rejected message among them is found when they come back. Each POST of
//!   a bisection is a node of a binary tree whose leaves are the entries, so a batch of `n`
//!   takes at most `2n − 1` POSTs.
//!
//! The I/O that carries this out (the POSTs, the leases, the decisions per message) is the
//! handler's.

use std::ops::Range;

/// Cuts entries of `lens` bytes (in order) into consecutive batches of at most `max_events`
/// entries and `max_bytes` of body (the entries, a comma between two, the brackets: see
/// [`crate::pipeline::event::batch`]); an entry that alone exceeds `max_bytes` is a batch of
/// its own.
pub(crate) fn group(lens: &[usize], max_events: usize, max_bytes: usize) -> Vec<Range<usize>> {
    let mut batches = Vec::new();
    let (mut start, mut body) = (0, 2usize);
    for (index, &len) in lens.iter().enumerate() {
        let count = index - start;
        let grown = body + len + usize::from(count > 0);
        if count > 0 && (count >= max_events.max(1) || grown > max_bytes) {
            batches.push(start..index);
            start = index;
            body = 2 + len;
        } else {
            body = grown;
        }
    }
    if start < lens.len() {
        batches.push(start..lens.len());
    }
    batches
}

/// The POSTs of one batch: first the whole batch, then, after each permanent failure of more
/// than one entry, its two halves (the first half first). Ranges index the batch's entries.
#[derive(Debug)]
pub(crate) struct Bisection {
    /// Ranges still to send, the next on top.
    pending: Vec<Range<usize>>,
}

impl Bisection {
    pub(crate) fn new(entries: usize) -> Self {
        Self {
            pending: (entries > 0).then_some(0..entries).into_iter().collect(),
        }
    }

    /// The entries of the next POST, or `None` when every entry has its outcome.
    pub(crate) fn next(&mut self) -> Option<Range<usize>> {
        self.pending.pop()
    }

    /// Notes that the POST of `range` failed permanently. True if it is split (its halves come
    /// next); false if it was a single entry, whose rejection is then its own.
    pub(crate) fn rejected(&mut self, range: Range<usize>) -> bool {
        if range.len() < 2 {
            return false;
        }
        let middle = range.start + range.len() / 2;
        self.pending.push(middle..range.end);
        self.pending.push(range.start..middle);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::event::batch;

    fn body_len(lens: &[usize], range: &Range<usize>) -> usize {
        let entries: Vec<Vec<u8>> = lens[range.clone()].iter().map(|&n| vec![b'x'; n]).collect();
        batch(&entries).body.len()
    }

    #[test]
    fn batches_respect_both_limits_and_keep_the_order() {
        let lens = vec![100; 70];
        let batches = group(&lens, 32, 1 << 20);
        assert_eq!(batches, vec![0..32, 32..64, 64..70]);

        // 100-byte entries under 1000 bytes: 9 entries are 2 + 900 + 8 = 910; 10 would be
        // 1011.
        let batches = group(&lens, 32, 1000);
        assert!(batches
            .iter()
            .all(|b| b.len() == 9 || b == batches.last().unwrap()));
        for batch in &batches {
            assert!(body_len(&lens, batch) <= 1000, "{batch:?}");
        }
        let covered: Vec<usize> = batches.iter().flat_map(|b| b.clone()).collect();
        assert_eq!(covered, (0..70).collect::<Vec<_>>());
    }

    #[test]
    fn the_byte_limit_is_inclusive() {
        // Two entries of 10 and 11 bytes: [a,b] is 2 + 21 + 1 = 24 bytes.
        assert_eq!(group(&[10, 11], 32, 24), vec![0..2]);
        assert_eq!(group(&[10, 11], 32, 23), vec![0..1, 1..2]);
    }

    #[test]
    fn an_entry_too_large_for_any_batch_goes_alone() {
        let lens = [10, 10, 5000, 10, 10];
        assert_eq!(group(&lens, 32, 1024), vec![0..2, 2..3, 3..5]);
        assert_eq!(group(&[5000], 32, 1024), vec![0..1]);
        assert_eq!(group(&[5000, 6000], 32, 1024), vec![0..1, 1..2]);
        assert!(group(&[], 32, 1024).is_empty());
    }

    #[test]
    fn a_batch_size_of_one_sends_every_entry_alone() {
        assert_eq!(group(&[1, 2, 3], 1, 1 << 20), vec![0..1, 1..2, 2..3]);
    }

    /// Runs a bisection of `n` entries against an endpoint that rejects every POST containing
    /// one of `bad`; returns the POSTs made and the entries rejected on their own.
    fn bisect(n: usize, bad: &[usize]) -> (usize, Vec<usize>) {
        let mut bisection = Bisection::new(n);
        let (mut posts, mut rejected) = (0, Vec::new());
        while let Some(range) = bisection.next() {
            posts += 1;
            if range.clone().any(|i| bad.contains(&i)) && !bisection.rejected(range.clone()) {
                rejected.push(range.start);
            }
        }
        (posts, rejected)
    }

    #[test]
    fn bisection_finds_exactly_the_rejected_entries_within_2n_minus_1_posts() {
        assert_eq!(bisect(32, &[]), (1, vec![]));
        assert_eq!(bisect(1, &[0]), (1, vec![0]));
        for n in 1..=32 {
            for bad in 0..n {
                let (posts, rejected) = bisect(n, &[bad]);
                assert_eq!(rejected, vec![bad], "n={n}");
                // One bad entry: the whole batch, then both halves at every level down to it.
                assert!(posts < 2 * n, "n={n}: {posts} POSTs");
            }
        }
        // Everything rejected: the whole tree, exactly 2n - 1 POSTs.
        let all: Vec<usize> = (0..32).collect();
        let (posts, rejected) = bisect(32, &all);
        assert_eq!(posts, 63);
        assert_eq!(rejected, all);
        let (posts, rejected) = bisect(7, &[0, 6]);
        assert_eq!(rejected, vec![0, 6]);
        assert!(posts <= 13);
    }
}
