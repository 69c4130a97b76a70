//! [`AllReduce`] between threads of one process: replicas on several devices of one
//! machine, and the tests of everything built on the trait, without `mpirun`.
//!
//! Deterministic: element `i` of a mean is always `((x0 + x1) + x2 ...) / n` in rank
//! order, whichever thread computes it and whenever the threads arrive, so every rank
//! gets the same bits. The work is spread as a reduce-scatter: each rank sums its own
//! contiguous share of the elements, then every rank gathers all the shares.

use super::AllReduce;
use crate::error::{Error, Result};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

/// Builds groups of in-process [`Member`]s.
pub struct ThreadGroup;

impl ThreadGroup {
    /// How long a member waits, by default, for its peers to join a collective before it
    /// fails with [`Error::Distributed`]: long enough for a slow training step.
    pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(120);

    /// `n` members, ranks `0..n`, with [`DEFAULT_TIMEOUT`](Self::DEFAULT_TIMEOUT); move
    /// each to its own thread.
    // A group is only its members: there is no group object to return.
    #[allow(clippy::new_ret_no_self)]
    pub fn new(n: usize) -> Vec<Member> {
        Self::with_timeout(n, Self::DEFAULT_TIMEOUT)
    }

    /// `n` members whose collectives give up after `timeout` without all peers.
    ///
    /// Failure bounds: a peer whose [`Member`] is dropped, including by the unwinding of a
    /// thread that panics, makes every other member's pending and later collectives fail
    /// at once (a condition-variable wake-up; within milliseconds). A peer that stays
    /// alive but never joins makes them fail after `timeout`. Either way the error names
    /// the peer ranks and the cause, and the group stays failed: every later call fails
    /// at once too.
    pub fn with_timeout(n: usize, timeout: Duration) -> Vec<Member> {
        let shared = Arc::new(Shared {
            n,
            timeout,
            state: Mutex::new(State {
                slots: [Slot::new(0, n), Slot::new(1, n)],
                failure: None,
            }),
            wake: Condvar::new(),
        });
        (0..n)
            .map(|rank| Member {
                rank,
                shared: Arc::clone(&shared),
                seq: 0,
            })
            .collect()
    }
}

/// One rank of a [`ThreadGroup`]; use it from one thread.
pub struct Member {
    rank: usize,
    shared: Arc<Shared>,
    /// How many collectives this member has started.
    seq: u64,
}

struct Shared {
    n: usize,
    timeout: Duration,
    state: Mutex<State>,
    wake: Condvar,
}

struct State {
    /// Collective `seq` uses slot `seq % 2`: a rank can be at most one collective ahead of
    /// the slowest (it cannot finish `seq + 1` before everyone has arrived there, which
    /// they do only after taking their results of `seq`).
    slots: [Slot; 2],
    /// Why the group cannot go on, once it cannot.
    failure: Option<String>,
}

struct Slot {
    /// The collective this slot serves now.
    seq: u64,
    parts: Vec<Option<Arc<Part>>>,
    arrived: usize,
    taken: usize,
}

impl Slot {
    fn new(seq: u64, n: usize) -> Self {
        Slot {
            seq,
            parts: vec![None; n],
            arrived: 0,
            taken: 0,
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Op {
    Mean,
    MeanShares,
    Broadcast,
    Barrier,
    Sum,
}

/// One rank's contribution to one collective.
struct Part {
    op: Op,
    /// The caller's buffer length, which must agree across ranks.
    len: usize,
    f32s: Vec<f32>,
    f64s: Vec<f64>,
}

impl Part {
    fn new(op: Op, len: usize) -> Self {
        Part {
            op,
            len,
            f32s: Vec::new(),
            f64s: Vec::new(),
        }
    }
}

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    // No code holding the lock can panic, so a poisoned lock still holds a sound state.
    state.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The elements that `rank` of `n` sums in a reduce-scatter of `len` elements.
fn share(len: usize, n: usize, rank: usize) -> std::ops::Range<usize> {
    let (base, extra) = (len / n, len % n);
    let start = rank * base + rank.min(extra);
    start..start + base + usize::from(rank < extra)
}

impl Member {
    /// Deposits `part` for the next collective and returns every rank's part, in rank
    /// order, once all have arrived; fails if a peer left, or after the timeout.
    fn exchange(&mut self, part: Part) -> Result<Vec<Arc<Part>>> {
        let seq = self.seq;
        self.seq += 1;
        let shared = Arc::clone(&self.shared);
        let idx = (seq % 2) as usize;
        let deadline = Instant::now() + shared.timeout;
        let mut st = lock(&shared.state);
        // Wait for the slot to be free of collective `seq - 2` (in practice it always is).
        while st.slots[idx].seq != seq {
            st = self.wait(&shared, st, deadline, seq)?;
        }
        let slot = &mut st.slots[idx];
        slot.parts[self.rank] = Some(Arc::new(part));
        slot.arrived += 1;
        shared.wake.notify_all();
        while st.slots[idx].arrived < shared.n {
            st = self.wait(&shared, st, deadline, seq)?;
        }
        let slot = &mut st.slots[idx];
        let parts: Vec<Arc<Part>> = slot.parts.iter().flatten().cloned().collect();
        slot.taken += 1;
        if slot.taken == shared.n {
            *slot = Slot::new(seq + 2, shared.n);
            shared.wake.notify_all();
        }
        drop(st);
        self.agree(&parts)?;
        Ok(parts)
    }

    /// Waits for a change, failing if the group has failed or `deadline` has passed.
    fn wait<'a>(
        &self,
        shared: &'a Shared,
        mut st: MutexGuard<'a, State>,
        deadline: Instant,
        seq: u64,
    ) -> Result<MutexGuard<'a, State>> {
        if let Some(why) = &st.failure {
            return Err(Error::dist(
                self.rank,
                format!("collective #{seq} cannot complete: {why}"),
            ));
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            let slot = &st.slots[(seq % 2) as usize];
            let missing: Vec<usize> = if slot.seq == seq {
                (0..shared.n).filter(|&r| slot.parts[r].is_none()).collect()
            } else {
                (0..shared.n).filter(|&r| r != self.rank).collect()
            };
            let why = format!(
                "rank {} waited {:?} in collective #{seq} for ranks {missing:?}, which did not join",
                self.rank, shared.timeout
            );
            st.failure = Some(why.clone());
            shared.wake.notify_all();
            return Err(Error::dist(self.rank, why));
        }
        let (st, _) = shared
            .wake
            .wait_timeout(st, left)
            .unwrap_or_else(PoisonError::into_inner);
        Ok(st)
    }

    /// Checks that every rank called the same collective with the same length.
    fn agree(&self, parts: &[Arc<Part>]) -> Result<()> {
        let first = match parts.first() {
            Some(p) => (p.op, p.len),
            None => return Ok(()),
        };
        if parts.iter().all(|p| (p.op, p.len) == first) {
            return Ok(());
        }
        let calls = parts
            .iter()
            .enumerate()
            .map(|(r, p)| format!("rank {r}: {:?} of {} values", p.op, p.len))
            .collect::<Vec<_>>()
            .join(", ");
        Err(Error::dist(
            self.rank,
            format!("ranks called different collectives ({calls})"),
        ))
    }
}

impl AllReduce for Member {
    fn rank(&self) -> usize {
        self.rank
    }

    fn size(&self) -> usize {
        self.shared.n
    }

    fn all_reduce_mean(&mut self, buf: &mut [f32]) -> Result<()> {
        let n = self.shared.n;
        let mut part = Part::new(Op::Mean, buf.len());
        part.f32s = buf.to_vec();
        let parts = self.exchange(part)?;
        // Sum this rank's share in rank order, then divide.
        let mine = share(buf.len(), n, self.rank);
        let mut sum = Part::new(Op::MeanShares, buf.len());
        sum.f32s = parts
            .first()
            .map(|p| p.f32s[mine.clone()].to_vec())
            .unwrap_or_default();
        for p in parts.iter().skip(1) {
            for (s, x) in sum.f32s.iter_mut().zip(&p.f32s[mine.clone()]) {
                *s += x;
            }
        }
        let div = n as f32;
        sum.f32s.iter_mut().for_each(|s| *s /= div);
        drop(parts);
        let shares = self.exchange(sum)?;
        let len = buf.len();
        for (r, p) in shares.iter().enumerate() {
            buf[share(len, n, r)].copy_from_slice(&p.f32s);
        }
        Ok(())
    }

    fn broadcast(&mut self, buf: &mut [f32]) -> Result<()> {
        let mut part = Part::new(Op::Broadcast, buf.len());
        if self.rank == 0 {
            part.f32s = buf.to_vec();
        }
        let parts = self.exchange(part)?;
        if let (true, Some(root)) = (self.rank != 0, parts.first()) {
            buf.copy_from_slice(&root.f32s);
        }
        Ok(())
    }

    fn barrier(&mut self) -> Result<()> {
        self.exchange(Part::new(Op::Barrier, 0)).map(|_| ())
    }

    fn all_reduce_sum(&mut self, sums: &mut [f64]) -> Result<()> {
        let mut part = Part::new(Op::Sum, sums.len());
        part.f64s = sums.to_vec();
        let parts = self.exchange(part)?;
        sums.fill(0.0);
        for p in &parts {
            for (s, x) in sums.iter_mut().zip(&p.f64s) {
                *s += x;
            }
        }
        Ok(())
    }
}

impl Drop for Member {
    /// Tells the peers that this rank is gone, so that they fail instead of waiting.
    fn drop(&mut self) {
        let mut st = lock(&self.shared.state);
        if st.failure.is_none() {
            let how = if std::thread::panicking() {
                "its thread panicked"
            } else {
                "its Member was dropped"
            };
            st.failure = Some(format!("rank {} left the group ({how})", self.rank));
        }
        self.shared.wake.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::share;

    #[test]
    fn shares_cover_every_element_once() {
        for len in [0, 1, 3, 17, 1000] {
            for n in 1..6 {
                let mut next = 0;
                for r in 0..n {
                    let s = share(len, n, r);
                    assert_eq!(s.start, next);
                    next = s.end;
                }
                assert_eq!(next, len);
            }
        }
    }
}
