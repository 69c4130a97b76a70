//! The one thread that owns the model: it takes queued requests, gathers those that
//! arrive close together into one batch, predicts it and answers each request.

use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use kiln::data::Scaler;
use kiln::{Result, Trainer};

use super::super::bad_arg;
use super::super::checkpoint::{CheckpointArgs, Opened};
use super::super::predict::{is_classifier, one_output};
use super::metrics::Metrics;

/// Requests waiting for the worker at most; more are refused (503) rather than queued
/// without bound.
const QUEUE: usize = 1024;

/// What the server needs to know of the model to check and answer requests.
#[derive(Clone, Copy, Debug)]
pub struct ModelInfo {
    /// Features per input row.
    pub features: usize,
    /// Outputs per row.
    pub outputs: usize,
    /// Whether the outputs are class probabilities.
    pub classify: bool,
}

/// How the worker gathers requests into batches.
#[derive(Clone, Copy, Debug)]
pub struct Coalesce {
    /// Rows per GPU batch at most (a larger request is split into batches this big).
    pub max_batch: usize,
    /// How long the first request of a batch waits for others; zero predicts each alone.
    pub max_wait: Duration,
}

/// One request's rows (unscaled, as `kiln predict` reads them) and where its answer goes.
pub struct Job {
    /// The rows, `features` values each.
    pub x: Vec<f32>,
    /// The model's outputs for the rows, or why there are none.
    pub reply: tokio::sync::oneshot::Sender<Answer>,
}

/// The outputs for a job's rows, or why there are none.
pub type Answer = std::result::Result<Vec<f32>, Failure>;

/// Why a job has no outputs: an HTTP status and a message for the client.
#[derive(Debug)]
pub struct Failure {
    /// The HTTP status code.
    pub status: u16,
    /// What went wrong.
    pub message: String,
}

impl Failure {
    /// A failure with this status and message.
    pub fn new(status: u16, message: String) -> Failure {
        Failure { status, message }
    }
}

/// The queue into the worker.
#[derive(Clone)]
pub struct Queue(SyncSender<Job>);

/// Why a job was not queued.
pub enum Refused {
    /// The queue is full.
    Busy,
    /// The worker has stopped.
    Stopped,
}

impl Queue {
    /// Queues a job without waiting: a full queue refuses it.
    pub fn submit(&self, job: Job) -> std::result::Result<(), Refused> {
        self.0.try_send(job).map_err(|e| match e {
            TrySendError::Full(_) => Refused::Busy,
            TrySendError::Disconnected(_) => Refused::Stopped,
        })
    }
}

/// Starts the worker thread, which loads the checkpoint itself so that the device is
/// only ever used from that thread; returns once the model is loaded.
pub fn start(
    run: CheckpointArgs,
    coalesce: Coalesce,
    metrics: Arc<Metrics>,
) -> Result<(Queue, ModelInfo, JoinHandle<()>)> {
    let (jobs, rx) = std::sync::mpsc::sync_channel(QUEUE);
    let (ready, loaded) = std::sync::mpsc::channel();
    let handle = std::thread::spawn(move || match load(&run) {
        Err(e) => {
            let _ = ready.send(Err(e));
        }
        Ok((trainer, scaler, info)) => {
            let _ = ready.send(Ok(info));
            let mut worker = Worker {
                trainer,
                scaler,
                info,
                coalesce,
                metrics,
            };
            worker.serve(&rx);
        }
    });
    let info = loaded
        .recv()
        .map_err(|_| bad_arg("--checkpoint", "the model worker stopped while loading"))??;
    Ok((Queue(jobs), info, handle))
}

/// Loads the run: its trainer, its feature scaler and what the server needs to know.
fn load(run: &CheckpointArgs) -> Result<(Trainer, Option<Scaler>, ModelInfo)> {
    let Opened {
        record, trainer, ..
    } = run.open()?;
    one_output(&trainer, "kiln serve")?;
    let info = ModelInfo {
        features: record.features,
        outputs: trainer.model.output_width(),
        classify: is_classifier(&trainer),
    };
    Ok((trainer, record.scaler(), info))
}

/// The model and how to batch for it.
struct Worker {
    trainer: Trainer,
    scaler: Option<Scaler>,
    info: ModelInfo,
    coalesce: Coalesce,
    metrics: Arc<Metrics>,
}

impl Worker {
    /// Answers jobs until every sender has gone (the server has shut down).
    fn serve(&mut self, rx: &Receiver<Job>) {
        let mut next = None;
        while let Some(first) = next.take().or_else(|| rx.recv().ok()) {
            let (batch, held) = self.gather(first, rx);
            next = held;
            self.answer(batch);
        }
    }

    /// `first` and the jobs that arrive within the wait, up to the batch size; a job
    /// that would overflow the batch is held for the next one.
    fn gather(&self, first: Job, rx: &Receiver<Job>) -> (Vec<Job>, Option<Job>) {
        if self.coalesce.max_wait.is_zero() {
            // Off means off: even requests already queued are predicted one by one.
            return (vec![first], None);
        }
        let f = self.info.features;
        let mut rows = first.x.len() / f;
        let mut batch = vec![first];
        let deadline = Instant::now() + self.coalesce.max_wait;
        while rows < self.coalesce.max_batch {
            let left = deadline.saturating_duration_since(Instant::now());
            let job = match rx.recv_timeout(left) {
                Ok(job) => job,
                Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => break,
            };
            let n = job.x.len() / f;
            if rows + n > self.coalesce.max_batch {
                return (batch, Some(job));
            }
            rows += n;
            batch.push(job);
        }
        (batch, None)
    }

    /// Predicts the batch's rows together and sends each job its own outputs.
    fn answer(&mut self, batch: Vec<Job>) {
        let batch: Vec<Job> = batch.into_iter().filter_map(|j| self.scale(j)).collect();
        let rows: usize = batch.iter().map(|j| j.x.len()).sum::<usize>() / self.info.features;
        if rows == 0 {
            return;
        }
        self.metrics.batch(rows);
        match self.predict(&batch, rows) {
            Ok(out) => {
                let mut out = out.into_iter();
                for job in batch {
                    let n = job.x.len() / self.info.features * self.info.outputs;
                    let _ = job.reply.send(Ok(out.by_ref().take(n).collect()));
                }
            }
            Err(e) => {
                for job in batch {
                    let _ = job.reply.send(Err(Failure::new(500, e.to_string())));
                }
            }
        }
    }

    /// The job with its features scaled as at training time, or `None` once it has been
    /// answered with why not: one request's bad rows must not fail the whole batch.
    fn scale(&self, mut job: Job) -> Option<Job> {
        if let Some(s) = &self.scaler {
            if let Err(e) = s.transform(&mut job.x) {
                let _ = job.reply.send(Err(Failure::new(400, e.to_string())));
                return None;
            }
        }
        if job.x.iter().all(|v| v.is_finite()) {
            return Some(job);
        }
        let why = "a feature is too large: scaled as at training time it is not a finite number";
        let _ = job.reply.send(Err(Failure::new(400, why.into())));
        None
    }

    /// The outputs of the batch's `rows` (scaled) rows. They are padded with zeros to one
    /// of a few batch sizes, because the model keeps buffers for only a few sizes and
    /// allocates them on the device for every new one.
    fn predict(&mut self, batch: &[Job], rows: usize) -> Result<Vec<f32>> {
        let f = self.info.features;
        let padded = padded_rows(rows, self.coalesce.max_batch);
        let mut x = Vec::with_capacity(padded * f);
        for job in batch {
            x.extend_from_slice(&job.x);
        }
        x.resize(padded * f, 0.0);
        let mut out = self.trainer.predict(&x, self.coalesce.max_batch)?;
        out.truncate(rows * self.info.outputs);
        Ok(out)
    }
}

/// The batch size `rows` rows are padded to: the next power of 8 (1, 8, 64, 512, ...)
/// up to `max_batch`, or a multiple of `max_batch` (predicted in batches of `max_batch`).
/// Powers of 8 keep the sizes few and the padding below 8 times the rows.
fn padded_rows(rows: usize, max_batch: usize) -> usize {
    let max = max_batch.max(1);
    if rows > max {
        return rows.div_ceil(max) * max;
    }
    std::iter::successors(Some(1usize), |b| b.checked_mul(8))
        .find(|&b| b >= rows)
        .map_or(max, |b| b.min(max))
}

#[cfg(test)]
mod tests {
    use super::padded_rows;

    #[test]
    fn batches_are_padded_to_a_few_sizes() {
        assert_eq!(padded_rows(1, 256), 1);
        assert_eq!(padded_rows(2, 256), 8);
        assert_eq!(padded_rows(9, 256), 64);
        assert_eq!(padded_rows(65, 256), 256);
        assert_eq!(padded_rows(300, 256), 512);
        assert_eq!(padded_rows(5, 4), 8);
        assert_eq!(padded_rows(3, 4), 4);
        assert_eq!(padded_rows(65, 1 << 30), 512);
        assert_eq!(padded_rows(0, 256), 1);
    }
}
