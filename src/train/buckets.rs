//! Gradient buckets: a data-parallel step that exchanges its gradients in pieces while
//! the backward pass is still running, instead of in one all-reduce after it.
//!
//! A bucket is a contiguous range of the flat gradient buffer (every parameter's gradient,
//! in order) of about `FitOptions::bucket_bytes`; its boundaries fall anywhere, inside a
//! tensor too. The backward pass runs from the last layer to the first, so the buckets at
//! the end of the buffer are complete first. As soon as the stages that write a bucket's
//! gradients are recorded, the step submits them with a copy of the bucket and starts its
//! readback; it then all-reduces the buckets read back before, while the GPU computes the
//! next ones. Once every bucket is averaged, the gradients are uploaded in one write and
//! the optimizer steps once, as without buckets.

use std::collections::VecDeque;
use std::ops::Range;
use std::time::Instant;

use super::metrics::Accumulator;
use super::Trainer;
use crate::dist::AllReduce;
use crate::error::{Error, Result};
use crate::nn::model::Param;
use crate::tensor::{Readback, Tensor};

/// One all-reduce of a bucketed step.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Bucket {
    /// Its values in the flat gradient buffer.
    pub range: Range<usize>,
    /// Its gradients are complete once the backward of stage `ready` is recorded (the
    /// stages run from the last to the first).
    pub ready: usize,
    /// (parameter, values of that parameter's gradient) it holds, in flat order.
    pub parts: Vec<(usize, Range<usize>)>,
}

/// Splits gradients of `lens` values each into buckets of `size` values, counted from the
/// end of the buffer (the first bucket may be shorter), in the order a step exchanges
/// them: the first complete first, then from the end of the buffer. `done[p]` is the
/// stage whose backward completes parameter `p`'s gradient (the lowest that writes it).
pub(crate) fn plan(lens: &[usize], done: &[usize], size: usize) -> Vec<Bucket> {
    let size = size.max(1);
    let total: usize = lens.iter().sum();
    let starts: Vec<usize> = lens
        .iter()
        .scan(0, |at, &n| {
            *at += n;
            Some(*at - n)
        })
        .collect();
    let mut buckets = Vec::new();
    let mut end = total;
    while end > 0 {
        let start = end.saturating_sub(size);
        let parts: Vec<(usize, Range<usize>)> = lens
            .iter()
            .zip(&starts)
            .enumerate()
            .filter_map(|(p, (&n, &s))| {
                let (lo, hi) = (start.max(s), end.min(s + n));
                (lo < hi).then(|| (p, lo - s..hi - s))
            })
            .collect();
        let ready = parts
            .iter()
            .map(|(p, _)| done.get(*p).copied().unwrap_or(0))
            .min()
            .unwrap_or(usize::MAX);
        buckets.push(Bucket {
            range: start..end,
            ready,
            parts,
        });
        end = start;
    }
    // Stable: among buckets complete at the same stage, the end of the buffer first.
    buckets.sort_by_key(|b| std::cmp::Reverse(b.ready));
    buckets
}

/// The exchange of one bucketed step in progress.
struct Exchange<'a> {
    plan: &'a [Bucket],
    group: &'a mut dyn AllReduce,
    /// This rank's share of the global batch, as in [`Trainer::exchange`].
    scale: f32,
    /// The averaged gradients, filled bucket by bucket.
    flat: Vec<f32>,
    /// The next bucket of `plan` to read back.
    next: usize,
    /// Buckets whose readback is started, oldest first.
    reading: VecDeque<(usize, Readback)>,
    /// Seconds spent in the all-reduces.
    seconds: f64,
}

impl Exchange<'_> {
    /// Starts reading back every bucket that stage `stage`'s backward completed; once new
    /// work is on the GPU, all-reduces the buckets read back before it meanwhile.
    fn after_stage(&mut self, stage: usize, params: &[Param]) -> Result<()> {
        let before = self.reading.len();
        while let Some(b) = self.plan.get(self.next).filter(|b| b.ready >= stage) {
            let parts = b
                .parts
                .iter()
                .map(|(p, r)| {
                    let grad = &params
                        .get(*p)
                        .ok_or_else(|| Error::arg("buckets", "a parameter the model lacks"))?
                        .grad;
                    Ok((grad, r.clone()))
                })
                .collect::<Result<Vec<(&Tensor, Range<usize>)>>>()?;
            self.reading
                .push_back((self.next, Tensor::start_read_ranges(&parts)?));
            self.next += 1;
        }
        if self.reading.len() > before {
            for _ in 0..before {
                self.reduce_oldest()?;
            }
        }
        Ok(())
    }

    /// Waits for the oldest readback, then averages it over the ranks.
    fn reduce_oldest(&mut self) -> Result<()> {
        let Some((k, read)) = self.reading.pop_front() else {
            return Ok(());
        };
        let mut values = read.wait()?;
        values.iter_mut().for_each(|g| *g *= self.scale);
        let start = Instant::now();
        self.group.all_reduce_mean(&mut values)?;
        self.seconds += start.elapsed().as_secs_f64();
        let range = self.plan.get(k).map(|b| b.range.clone()).unwrap_or(0..0);
        self.flat
            .get_mut(range)
            .filter(|dst| dst.len() == values.len())
            .ok_or_else(|| Error::shape("buckets", "a bucket of another length came back"))?
            .copy_from_slice(&values);
        Ok(())
    }

    /// Exchanges what is left: a rank without rows in this batch sends zeros for every
    /// bucket, so that all ranks make the same calls.
    fn finish(mut self) -> Result<(Vec<f32>, f64)> {
        while let Some(b) = self.plan.get(self.next) {
            let zeros = vec![0.0; b.range.len()];
            self.reading.push_back((self.next, Readback::Host(zeros)));
            self.next += 1;
        }
        while !self.reading.is_empty() {
            self.reduce_oldest()?;
        }
        Ok((self.flat, self.seconds))
    }
}

/// The default splits the gradients into this many buckets...
const DEFAULT_BUCKETS: usize = 16;
/// ... of at least this many bytes: on a quiet machine this size trained at least as
/// fast as smaller buckets and as one exchange, and a fixed count bounds the per-bucket
/// overhead (a readback and an all-reduce call each) for large models (docs/training.md,
/// "Gradient buckets").
const MIN_DEFAULT_BUCKET_BYTES: usize = 256_000;

impl Trainer {
    /// The bucket size when `FitOptions::bucket_bytes` is `None`.
    pub(super) fn default_bucket_bytes(&self) -> usize {
        let total: usize = self.model.params.iter().map(|p| p.grad.len() * 4).sum();
        total
            .div_ceil(DEFAULT_BUCKETS)
            .max(MIN_DEFAULT_BUCKET_BYTES)
    }

    /// The buckets of `bytes` each for this model's gradients (see [`plan`]).
    pub(super) fn bucket_plan(&self, bytes: usize) -> Vec<Bucket> {
        let params = &self.model.params;
        let mut done = vec![usize::MAX; params.len()];
        for (i, stage) in self.train_stages.iter().enumerate() {
            for &p in &stage.params {
                if let Some(d) = done.get_mut(p) {
                    *d = (*d).min(i);
                }
            }
        }
        let lens: Vec<usize> = params.iter().map(|p| p.grad.len()).collect();
        plan(&lens, &done, bytes / 4)
    }

    /// One data-parallel step with its gradients exchanged in `buckets` during the
    /// backward pass, on the batch in workspace `key` (`None`: this rank has no rows in
    /// it), `rows` of the `batch` rows; leaves the averaged gradients for the update.
    pub(super) fn bucketed_step(
        &mut self,
        group: &mut dyn AllReduce,
        buckets: &[Bucket],
        key: Option<(usize, usize)>,
        acc: Option<&mut Accumulator>,
        (rows, batch): (usize, usize),
    ) -> Result<()> {
        let total = buckets.iter().map(|b| b.range.len()).sum();
        let mut ex = Exchange {
            plan: buckets,
            scale: (rows * group.size()) as f32 / batch.max(1) as f32,
            group,
            flat: vec![0.0; total],
            next: 0,
            reading: VecDeque::new(),
            seconds: 0.0,
        };
        if let Some(key) = key {
            self.step_ws_then(key, acc, &mut |i, params| ex.after_stage(i, params))?;
        }
        let (flat, seconds) = ex.finish()?;
        self.exchanges.steps += 1;
        self.exchanges.bytes += flat.len() as u64 * 4;
        self.exchanges.seconds += seconds;
        self.write_grads(&flat)
    }
}

#[cfg(test)]
mod tests {
    use super::plan;

    #[test]
    fn buckets_cover_the_buffer_once_from_the_end() {
        // Three tensors (10, 4, 7 values) written by stages 0, 1, 1.
        let (lens, done) = ([10, 4, 7], [0, 1, 1]);
        for size in [1, 3, 5, 11, 21, 100] {
            let buckets = plan(&lens, &done, size);
            let mut covered = vec![0; 21];
            for b in &buckets {
                assert!(b.range.len() <= size);
                covered[b.range.clone()].iter_mut().for_each(|c| *c += 1);
                let held: usize = b.parts.iter().map(|(_, r)| r.len()).sum();
                assert_eq!(held, b.range.len(), "size {size}: {b:?}");
            }
            assert!(covered.iter().all(|&c| c == 1), "size {size}: {covered:?}");
            assert_eq!(buckets.len(), 21usize.div_ceil(size));
        }
        // Boundaries inside tensors: 21 values in 5s from the end split the first
        // tensor at 6 and 1, and the last at 2.
        let b = plan(&lens, &done, 5);
        assert_eq!(b[0].range, 16..21);
        assert_eq!(b[0].parts, vec![(2, 2..7)]);
        assert_eq!(b[1].parts, vec![(1, 1..4), (2, 0..2)]);
        assert_eq!((b[1].ready, b[2].ready), (1, 0));
        assert_eq!(b[2].parts, vec![(0, 6..10), (1, 0..1)]);
    }

    #[test]
    fn buckets_go_in_the_order_their_gradients_complete() {
        // The gradients of the last stage go first, wherever they lie in the buffer.
        let buckets = plan(&[4, 4, 4], &[0, 1, 2], 4);
        let order: Vec<usize> = buckets.iter().map(|b| b.range.start).collect();
        assert_eq!(order, vec![8, 4, 0]);
        let buckets = plan(&[4, 4, 4], &[2, 1, 0], 4);
        let order: Vec<usize> = buckets.iter().map(|b| b.range.start).collect();
        assert_eq!(order, vec![0, 4, 8]);
    }
}
