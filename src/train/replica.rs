//! Data-parallel training: every replica holds the same weights and optimizer state,
//! trains on its share of each global batch, and the replicas average their gradients
//! with one all-reduce before every optimizer step, so they stay identical. The
//! replicas are threads of this process ([`Trainer::fit_replicas`]) or MPI ranks
//! ([`Trainer::fit_distributed`] with `kiln::dist::mpi::MpiGroup`).
//!
//! A global batch of B rows over N replicas gives replica r `shard(B, N, r)` rows. Each
//! replica's loss is the mean over its own rows, so its gradient is scaled by
//! rows_r · N / B before the mean over the replicas: the result is the gradient of the
//! mean loss over all B rows, as one device would compute it.

use super::{FitOptions, History, Trainer};
use crate::dist::{AllReduce, Fingerprint, ThreadGroup};
use crate::error::{Error, Result};
use crate::tensor::Tensor;

/// What the gradient exchanges of data-parallel training have cost so far.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct ExchangeStats {
    /// Optimizer steps whose gradients were exchanged (in one all-reduce, or one per
    /// bucket).
    pub steps: u64,
    /// Gradient bytes this rank sent into their all-reduces.
    pub bytes: u64,
    /// Seconds spent in those all-reduces, waiting for the slowest rank included; with
    /// buckets, the GPU computes the next buckets during all but the last.
    pub seconds: f64,
}

/// The rows of a global batch of `batch` rows that rank `rank` of `size` trains on, as
/// (offset into the batch, rows): the first `batch % size` ranks take one row more.
pub fn shard(batch: usize, size: usize, rank: usize) -> (usize, usize) {
    let size = size.max(1);
    let (base, extra) = (batch / size, batch % size);
    (
        rank * base + rank.min(extra),
        base + usize::from(rank < extra),
    )
}

impl Trainer {
    /// Trains as one replica of a data-parallel job: every rank of `group` calls this
    /// with the same model, data and options, and takes its [`shard`] of every global
    /// batch of `opts.batch_size` rows. Rank 0's weights are copied to every rank first;
    /// the metrics of every epoch are summed over the ranks, so all report the same.
    pub fn fit_distributed(
        &mut self,
        group: &mut dyn AllReduce,
        x: &[f32],
        y: &[f32],
        opts: FitOptions,
    ) -> Result<History> {
        let mut run = self.start_fit_distributed(group, x, y, opts)?;
        while run.next_epoch()?.is_some() {}
        run.finish()
    }

    /// [`Trainer::fit_distributed`] one epoch per [`FitRun::next_epoch`](super::FitRun::next_epoch).
    pub fn start_fit_distributed<'a>(
        &'a mut self,
        group: &'a mut dyn AllReduce,
        x: &[f32],
        y: &[f32],
        opts: FitOptions,
    ) -> Result<super::FitRun<'a>> {
        let print = self.fingerprint(x, y, &opts);
        let mut run = self.begin_fit(x, y, opts, Some((group.size(), group.rank())))?;
        group.check_fingerprint("model, data set and fit options", print)?;
        run.trainer.broadcast_state(group)?;
        run.group = Some(group);
        Ok(run)
    }

    /// Trains this trainer and `replicas` (the same model compiled on other devices) as
    /// one data-parallel job in this process, one thread each; `self` is rank 0 and runs
    /// `opts`'s hooks. Every replica ends with the same weights as `self`.
    pub fn fit_replicas(
        &mut self,
        replicas: &mut [Trainer],
        x: &[f32],
        y: &[f32],
        opts: FitOptions,
    ) -> Result<History> {
        let mut members = ThreadGroup::new(replicas.len() + 1).into_iter();
        let mut first = members
            .next()
            .ok_or_else(|| Error::arg("replicas", "a group without rank 0"))?;
        std::thread::scope(|s| {
            let handles: Vec<_> = replicas
                .iter_mut()
                .zip(members)
                .map(|(t, mut m)| {
                    let o = Settings::of(&opts);
                    s.spawn(move || t.fit_distributed(&mut m, x, y, o.options()).map(drop))
                })
                .collect();
            let mine = self.fit_distributed(&mut first, x, y, opts);
            // Rank 0's failure reaches the others through its member, dropped here.
            drop(first);
            let theirs: Vec<Result<()>> = handles
                .into_iter()
                .enumerate()
                .map(|(i, h)| {
                    h.join().unwrap_or_else(|_| {
                        Err(Error::Distributed {
                            rank: i + 1,
                            detail: "the replica's thread panicked".into(),
                        })
                    })
                })
                .collect();
            job_result(mine, theirs)
        })
    }

    /// What this trainer's gradient exchanges have cost (zeros outside data-parallel fits).
    pub fn exchange_stats(&self) -> ExchangeStats {
        self.exchanges
    }

    /// What must agree on every rank: parameters, targets, data and fit options.
    fn fingerprint(&self, x: &[f32], y: &[f32], opts: &FitOptions) -> u64 {
        let mut f = Fingerprint::new()
            .num(x.len() as u64)
            .num(y.len() as u64)
            .num(opts.batch_size as u64)
            .num(opts.epochs as u64)
            .num(opts.seed)
            .num(u64::from(opts.shuffle))
            .num(opts.bucket_bytes.map_or(u64::MAX, |b| b as u64))
            .text(&format!(
                "{:?} {:?} {:?} {:?}",
                self.loss,
                self.optimizer.rule,
                self.metrics,
                self.outputs
                    .as_ref()
                    .map(|o| o.plans.iter().map(|p| &p.spec).collect::<Vec<_>>())
            ));
        for p in &self.model.params {
            f = f.text(&p.name).dims(p.value.shape());
        }
        // A sample of the data: enough to tell data sets apart without hashing gigabytes.
        for data in [x, y] {
            let step = (data.len() / 4096).max(1);
            f = data
                .iter()
                .step_by(step)
                .fold(f, |f, v| f.bytes(&v.to_le_bytes()));
        }
        f.finish()
    }

    /// Copies rank 0's weights and running statistics to every rank.
    fn broadcast_state(&mut self, group: &mut dyn AllReduce) -> Result<()> {
        let model = &mut self.model;
        let mut tensors: Vec<&mut Tensor> = model.params.iter_mut().map(|p| &mut p.value).collect();
        tensors.extend(
            model
                .buffers
                .iter_mut()
                .flat_map(|b| b.named_mut())
                .map(|(_, t)| t),
        );
        let mut flat = Tensor::read_many(&tensors.iter().map(|t| &**t).collect::<Vec<_>>())?;
        group.broadcast(&mut flat)?;
        write_parts(&mut tensors, &flat)
    }

    /// Replaces every gradient by the mean over the ranks of the gradients scaled to the
    /// global batch; `rows` of the `batch` rows were this rank's (0: it adds zeros).
    pub(super) fn exchange(
        &mut self,
        group: &mut dyn AllReduce,
        rows: usize,
        batch: usize,
    ) -> Result<()> {
        let mut flat = match rows {
            0 => vec![0.0; self.model.params.iter().map(|p| p.grad.len()).sum()],
            _ => self.read_grads()?,
        };
        let scale = (rows * group.size()) as f32 / batch.max(1) as f32;
        flat.iter_mut().for_each(|g| *g *= scale);
        let start = std::time::Instant::now();
        group.all_reduce_mean(&mut flat)?;
        self.exchanges.steps += 1;
        self.exchanges.bytes += flat.len() as u64 * 4;
        self.exchanges.seconds += start.elapsed().as_secs_f64();
        self.write_grads(&flat)
    }

    /// Every gradient, in order: one transfer where they are packed.
    fn read_grads(&self) -> Result<Vec<f32>> {
        let model = &self.model;
        match model.packed.as_ref().filter(|pk| pk.holds(&model.params)) {
            Some(pk) => Ok(pk.unpad(&pk.grads.to_vec()?)),
            None => Tensor::read_many(&model.params.iter().map(|p| &p.grad).collect::<Vec<_>>()),
        }
    }

    /// Replaces every gradient by its part of `flat`: one transfer where they are packed.
    pub(super) fn write_grads(&mut self, flat: &[f32]) -> Result<()> {
        let model = &mut self.model;
        if let Some(pk) = model.packed.as_mut().filter(|pk| pk.holds(&model.params)) {
            let padded = pk.pad(flat)?;
            return pk.grads.write(&padded);
        }
        let mut grads: Vec<&mut Tensor> = model.params.iter_mut().map(|p| &mut p.grad).collect();
        write_parts(&mut grads, flat)
    }
}

/// The job's result: rank 0's history, or the error that explains the failure: the first
/// that is not a peer's report of another rank's failure (rank 0's as it is; another
/// rank's as an [`Error::Distributed`] naming it), else rank 0's.
fn job_result(mine: Result<History>, theirs: Vec<Result<()>>) -> Result<History> {
    let echo = |e: &Error| matches!(e, Error::Distributed { .. });
    if mine.as_ref().is_err_and(|e| !echo(e)) {
        return mine;
    }
    let mut errors: Vec<(usize, Error)> = theirs
        .into_iter()
        .enumerate()
        .filter_map(|(i, r)| r.err().map(|e| (i + 1, e)))
        .collect();
    // A root cause first, then peers' reports of it.
    errors.sort_by_key(|(_, e)| echo(e));
    match (mine, errors.into_iter().next()) {
        (_, Some((rank, e))) if !echo(&e) => Err(Error::Distributed {
            rank,
            detail: format!("rank {rank} failed: {e}"),
        }),
        (Ok(_), Some((_, e))) => Err(e),
        (mine, _) => mine,
    }
}

/// Writes consecutive parts of `flat` into the tensors, in order.
fn write_parts(tensors: &mut [&mut Tensor], flat: &[f32]) -> Result<()> {
    let mut at = 0;
    for t in tensors.iter_mut() {
        let part = flat
            .get(at..at + t.len())
            .ok_or_else(|| Error::shape("all-reduce", "fewer values than tensors"))?;
        t.write(part)?;
        at += t.len();
    }
    Ok(())
}

/// A fit's options without its hooks (which stay with rank 0), to send to a thread.
struct Settings {
    epochs: usize,
    batch_size: usize,
    shuffle: bool,
    seed: u64,
    validation: super::Validation,
    early_stopping: Option<super::EarlyStopping>,
    loss_every: usize,
    steps_per_execution: usize,
    bucket_bytes: Option<usize>,
}

impl Settings {
    fn of(o: &FitOptions) -> Settings {
        Settings {
            epochs: o.epochs,
            batch_size: o.batch_size,
            shuffle: o.shuffle,
            seed: o.seed,
            validation: o.validation.clone(),
            early_stopping: o.early_stopping.clone(),
            loss_every: o.loss_every,
            steps_per_execution: o.steps_per_execution,
            bucket_bytes: o.bucket_bytes,
        }
    }

    fn options(self) -> FitOptions {
        FitOptions {
            epochs: self.epochs,
            batch_size: self.batch_size,
            shuffle: self.shuffle,
            seed: self.seed,
            validation: self.validation,
            early_stopping: self.early_stopping,
            loss_every: self.loss_every,
            on_epoch: Vec::new(),
            on_step: None,
            steps_per_execution: self.steps_per_execution,
            bucket_bytes: self.bucket_bytes,
        }
    }
}
