//! Collective communication for data-parallel training: every replica (a thread in this
//! process, or an MPI rank) holds the same weights, computes gradients on its own slice of
//! the global batch, and the replicas then average their gradients with one all-reduce.
//!
//! [`AllReduce`] is the few collectives that needs; [`ThreadGroup`] implements it between
//! threads of one process (no feature, used by the tests), and `mpi::MpiGroup` between
//! processes and machines over MPI (feature `mpi`). Every call is collective: each rank
//! calls the same operations, in the same order, with buffers of the same length; a rank
//! that does not is reported as an [`Error::Distributed`](crate::Error::Distributed)
//! naming the ranks and the cause, never a hang.

#[cfg(feature = "mpi")]
pub mod mpi;
pub mod threads;

pub use threads::{Member, ThreadGroup};

use crate::error::{Error, Result};

/// The collectives of data-parallel training. Every method must be called by every rank
/// of the group, in the same order, with buffers of the same length.
pub trait AllReduce {
    /// This replica's rank, `0..size()`.
    fn rank(&self) -> usize;

    /// How many ranks the group has.
    fn size(&self) -> usize;

    /// Replaces `buf` on every rank by the element-wise mean over the ranks (sum, then
    /// divide by `size()`); every rank gets the same bits.
    fn all_reduce_mean(&mut self, buf: &mut [f32]) -> Result<()>;

    /// Copies rank 0's `buf` into every other rank's `buf` (initial weights).
    fn broadcast(&mut self, buf: &mut [f32]) -> Result<()>;

    /// Returns once every rank has called it.
    fn barrier(&mut self) -> Result<()>;

    /// Replaces `sums` on every rank by the element-wise sum over the ranks: metric sums
    /// and counts (loss × rows, correct predictions, rows), so that every rank reports the
    /// same metrics.
    fn all_reduce_sum(&mut self, sums: &mut [f64]) -> Result<()>;

    /// Checks that every rank passed the same `fingerprint` (see [`Fingerprint`]) for
    /// `what` (e.g. "model, data set and batch size"); otherwise every rank fails with the
    /// same [`Error::RankMismatch`], naming the ranks that differ from rank 0.
    ///
    /// Exact: each rank's fingerprint is gathered as two 32-bit halves in its own slots of
    /// an [`all_reduce_sum`](AllReduce::all_reduce_sum), where every other rank adds zeros.
    fn check_fingerprint(&mut self, what: &str, fingerprint: u64) -> Result<()> {
        let (rank, size) = (self.rank(), self.size());
        let mut slots = vec![0.0f64; 2 * size];
        if let Some(pair) = slots.get_mut(2 * rank..2 * rank + 2) {
            pair[0] = (fingerprint >> 32) as f64;
            pair[1] = (fingerprint & 0xffff_ffff) as f64;
        }
        self.all_reduce_sum(&mut slots)?;
        let prints: Vec<u64> = slots
            .chunks_exact(2)
            .map(|p| ((p[0] as u64) << 32) | (p[1] as u64))
            .collect();
        let first = prints.first().copied().unwrap_or(fingerprint);
        let ranks: Vec<usize> = (0..size).filter(|&r| prints[r] != first).collect();
        if ranks.is_empty() {
            return Ok(());
        }
        let detail = prints
            .iter()
            .enumerate()
            .map(|(r, p)| format!("rank {r}: {p:016x}"))
            .collect::<Vec<_>>()
            .join(", ");
        Err(Error::RankMismatch {
            rank,
            what: what.to_string(),
            ranks,
            detail,
        })
    }
}

/// A stable 64-bit hash (FNV-1a) of what must be equal on every rank, the same on every
/// machine and build: feed it the model's parameter shapes, the data set's size and the
/// batch size, then pass [`finish`](Fingerprint::finish) to
/// [`AllReduce::check_fingerprint`].
#[derive(Clone, Copy, Debug)]
pub struct Fingerprint(u64);

impl Default for Fingerprint {
    fn default() -> Self {
        Self::new()
    }
}

impl Fingerprint {
    /// An empty fingerprint.
    pub fn new() -> Self {
        Fingerprint(0xcbf2_9ce4_8422_2325)
    }

    /// Adds bytes.
    pub fn bytes(mut self, bytes: &[u8]) -> Self {
        for &b in bytes {
            self.0 ^= u64::from(b);
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
        self
    }

    /// Adds a number (as 8 little-endian bytes, whatever the platform's `usize`).
    pub fn num(self, n: u64) -> Self {
        self.bytes(&n.to_le_bytes())
    }

    /// Adds a shape or any list of sizes, with its length, so `[2, 3]` + `[4]` differs
    /// from `[2]` + `[3, 4]`.
    pub fn dims(self, dims: &[usize]) -> Self {
        dims.iter()
            .fold(self.num(dims.len() as u64), |f, &d| f.num(d as u64))
    }

    /// Adds a string, with its length.
    pub fn text(self, s: &str) -> Self {
        self.num(s.len() as u64).bytes(s.as_bytes())
    }

    /// The hash.
    pub fn finish(self) -> u64 {
        self.0
    }
}
