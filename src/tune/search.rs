//! Running a search: trials in groups of the same model shape, within a trial and a
//! time budget, saving trials.csv after each; a rerun resumes where the last stopped.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::results::{trial_dir, Status, TrialRow, Trials};
use super::space::{Config, Space, Value};
use super::strategy::{Rung, Strategy};
use crate::error::{Error, Result, TuneError};
use crate::io::tensorboard::{HParam, SessionStatus, TensorBoard};

/// One trial to train: up to `epochs` epochs in all, from its checkpoint in `dir` if
/// that holds one.
#[derive(Clone, Debug)]
pub struct TrialJob {
    /// 1-based trial number.
    pub id: usize,
    /// Its hyperparameters.
    pub config: Config,
    /// Its run folder.
    pub dir: PathBuf,
    /// Epochs to reach, in all.
    pub epochs: usize,
    /// Epochs of the longest trial of the search: the span of a learning-rate schedule,
    /// so that a trial continued by successive halving follows the schedule it began.
    pub horizon: usize,
    /// Stop after the epoch that ends past this (the time budget).
    pub deadline: Option<Instant>,
}

/// What a trial reached.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TrialOutcome {
    /// Epochs trained, in all.
    pub epochs: usize,
    /// The validation metric after the last epoch.
    pub metric: Option<f64>,
    /// The validation loss after the last epoch.
    pub loss: Option<f64>,
    /// Seconds this call spent training it.
    pub seconds: f64,
}

/// Trains trials for a [`Search`].
pub trait TrialRunner {
    /// The validation metric that ranks trials (an accuracy; otherwise the validation
    /// loss ranks and this names the metric reported beside it, such as "mae").
    fn metric(&self) -> String;

    /// Trains `jobs`, trials that share one model shape ([`Config::shape_key`]), calling
    /// `done` as each finishes (with its error, if training failed). Errors that `done`
    /// returns, and errors of the device or files, end the search.
    fn run_group(
        &mut self,
        jobs: &[TrialJob],
        done: &mut dyn FnMut(&TrialJob, Result<TrialOutcome>) -> Result<()>,
    ) -> Result<()>;
}

/// A hyperparameter search: its space, strategy, budgets and folder.
#[derive(Clone, Debug)]
pub struct Search {
    /// What varies.
    pub space: Space,
    /// How trials are picked.
    pub strategy: Strategy,
    /// Epochs of a full trial (successive halving's last rung).
    pub epochs: usize,
    /// The search folder: trials.csv, trials/NNN, best.
    pub dir: PathBuf,
    /// At most this many trials (see [`Strategy::candidates`] for the default).
    pub trials: Option<usize>,
    /// Start no epoch after this much time has passed.
    pub time_budget: Option<Duration>,
    /// Write HParams summaries here: the experiment, then a session per finished trial.
    pub tensorboard: Option<PathBuf>,
}

/// What [`Search::run`] did.
#[derive(Clone, Debug)]
pub struct Report {
    /// Every trial so far, from earlier runs of the search too.
    pub trials: Trials,
    /// The trials this run trained (a trial continued by several rungs once).
    pub ran: Vec<usize>,
    /// Whether the time budget ended the search before its trials were done.
    pub out_of_time: bool,
}

impl Search {
    /// A search over `space` with `strategy`, trials of `epochs` epochs, in `dir`.
    pub fn new(space: Space, strategy: Strategy, epochs: usize, dir: impl Into<PathBuf>) -> Search {
        Search {
            space,
            strategy,
            epochs,
            dir: dir.into(),
            trials: None,
            time_budget: None,
            tensorboard: None,
        }
    }

    /// Checks the description: a non-empty space, budgets above 0, epochs above 0.
    pub fn check(&self) -> Result<()> {
        self.space.check()?;
        if self.trials == Some(0) {
            return Err(TuneError::ZeroBudget("trial").into());
        }
        if self.time_budget == Some(Duration::ZERO) {
            return Err(TuneError::ZeroBudget("time").into());
        }
        if self.epochs == 0 {
            return Err(TuneError::ZeroBudget("epoch").into());
        }
        Ok(())
    }

    /// Runs the trials not yet run (all, the first time), rung by rung, each rung's
    /// trials grouped by model shape; trials.csv and `best/` are rewritten after each.
    pub fn run(&self, runner: &mut dyn TrialRunner) -> Result<Report> {
        self.check()?;
        let candidates = self.strategy.candidates(&self.space, self.trials)?;
        std::fs::create_dir_all(&self.dir).map_err(|e| Error::io(&self.dir, e))?;
        let mut trials = self.previous(&candidates, &runner.metric())?;
        let metric = runner.metric();
        self.start_board(&candidates, &metric)?;
        let deadline = self.time_budget.map(|b| Instant::now() + b);
        let mut ran = Vec::new();
        let rungs = self.strategy.rungs(candidates.len(), self.epochs);
        for (i, rung) in rungs.iter().enumerate() {
            if i > 0 {
                self.cut(&mut trials, rung)?;
            }
            let jobs = self.rung_jobs(&candidates, &trials, rung, deadline);
            for group in by_shape(jobs) {
                if deadline.is_some_and(|d| Instant::now() >= d) {
                    return Ok(Report {
                        trials,
                        ran,
                        out_of_time: true,
                    });
                }
                runner.run_group(&group, &mut |job, outcome| {
                    let row = self.row(&trials, job, outcome)?;
                    if let Some(dir) = &self.tensorboard {
                        session(dir, &row, &trials.metric)?;
                    }
                    trials.put(row);
                    trials.save(&self.dir)?;
                    trials.update_best(&self.dir)?;
                    ran.push(job.id);
                    Ok(())
                })?;
            }
            let stopped = trials.rows.iter().any(|r| r.status == Status::Stopped);
            if stopped {
                return Ok(Report {
                    trials,
                    ran,
                    out_of_time: true,
                });
            }
        }
        ran.sort_unstable();
        ran.dedup();
        Ok(Report {
            trials,
            ran,
            out_of_time: false,
        })
    }

    /// The trials of earlier runs of this search, checked against this run's candidates.
    fn previous(&self, candidates: &[Config], metric: &str) -> Result<Trials> {
        let Some(trials) = Trials::load(&self.dir)? else {
            return Ok(Trials::new(metric, self.space.names()));
        };
        let clash = |detail: String| TuneError::BadValue {
            name: format!("resuming {}", self.dir.display()),
            detail: format!("{detail}; use another --out folder for another search"),
        };
        if trials.params != self.space.names() {
            return Err(clash("it searched over other hyperparameters".into()).into());
        }
        for row in &trials.rows {
            if candidates.get(row.id.wrapping_sub(1)) != Some(&row.config) {
                return Err(clash(format!(
                    "its trial {} ({}) is not this search's (another space, strategy or seed)",
                    row.id, row.config
                ))
                .into());
            }
        }
        Ok(trials)
    }

    /// Successive halving's cut before `rung`: of the trials still in the race, those
    /// outside the best `rung.keep` are halted (once; a resumed search finds it made).
    fn cut(&self, trials: &mut Trials, rung: &Rung) -> Result<()> {
        let alive: Vec<usize> = trials
            .ranked()
            .iter()
            .filter(|r| !matches!(r.status, Status::Halted | Status::Failed))
            .map(|r| r.id)
            .collect();
        if alive.len() <= rung.keep {
            return Ok(());
        }
        for id in &alive[rung.keep..] {
            if let Some(row) = trials.get(*id).cloned() {
                let row = TrialRow {
                    status: Status::Halted,
                    ..row
                };
                if let Some(dir) = &self.tensorboard {
                    session(dir, &row, &trials.metric)?;
                }
                trials.put(row);
            }
        }
        trials.save(&self.dir)
    }

    /// The trials of `rung` that have not reached its epochs: those without a row, or
    /// paused or stopped below them.
    fn rung_jobs(
        &self,
        candidates: &[Config],
        trials: &Trials,
        rung: &Rung,
        deadline: Option<Instant>,
    ) -> Vec<TrialJob> {
        candidates
            .iter()
            .enumerate()
            .map(|(i, c)| (i + 1, c))
            .filter(|(id, _)| match trials.get(*id) {
                None => true,
                Some(r) => {
                    matches!(r.status, Status::Paused | Status::Stopped) && r.epochs < rung.epochs
                }
            })
            .map(|(id, config)| TrialJob {
                id,
                config: config.clone(),
                dir: trial_dir(&self.dir, id),
                epochs: rung.epochs,
                horizon: self.epochs,
                deadline,
            })
            .collect()
    }

    /// The row a finished job leaves: its outcome added to what earlier rungs spent.
    fn row(
        &self,
        trials: &Trials,
        job: &TrialJob,
        outcome: Result<TrialOutcome>,
    ) -> Result<TrialRow> {
        let before = trials.get(job.id).map_or(0.0, |r| r.seconds);
        let (outcome, failed) = match outcome {
            Ok(o) => (o, false),
            Err(e) if trial_fault(&e) => (TrialOutcome::default(), true),
            Err(e) => return Err(e),
        };
        let status = if failed {
            Status::Failed
        } else if outcome.epochs < job.epochs {
            Status::Stopped
        } else if outcome.epochs >= self.epochs {
            Status::Done
        } else {
            Status::Paused
        };
        Ok(TrialRow {
            id: job.id,
            config: job.config.clone(),
            epochs: outcome.epochs,
            metric: outcome.metric,
            loss: outcome.loss,
            seconds: before + outcome.seconds,
            status,
        })
    }

    /// Writes the HParams experiment into the log folder, once (a resumed search finds
    /// it written): the hyperparameters and the two metrics trials report.
    fn start_board(&self, candidates: &[Config], metric: &str) -> Result<()> {
        let Some(dir) = &self.tensorboard else {
            return Ok(());
        };
        if dir.join(EXPERIMENT_MARK).exists() {
            return Ok(());
        }
        let mut board = TensorBoard::new(dir)?;
        let sample = candidates.first().cloned().unwrap_or_default();
        board.experiment(
            &hparams(&sample),
            &[format!("val_{metric}"), "val_loss".into()],
        )?;
        board.flush()?;
        let mark = dir.join(EXPERIMENT_MARK);
        std::fs::write(&mark, "").map_err(|e| Error::io(&mark, e))
    }
}

/// Marks a TensorBoard folder whose experiment summary is written.
const EXPERIMENT_MARK: &str = "kiln-experiment";

/// Errors of one trial's settings or numbers, which fail that trial and not the search.
fn trial_fault(e: &Error) -> bool {
    matches!(
        e,
        Error::Diverged { .. }
            | Error::OutOfMemory { .. }
            | Error::OverLimit { .. }
            | Error::Shape { .. }
            | Error::InvalidArgument { .. }
    )
}

/// Splits jobs into groups of one model shape, in order of their first trial.
fn by_shape(jobs: Vec<TrialJob>) -> Vec<Vec<TrialJob>> {
    let mut order: Vec<String> = Vec::new();
    let mut groups: BTreeMap<String, Vec<TrialJob>> = BTreeMap::new();
    for job in jobs {
        let key = job.config.shape_key();
        if !groups.contains_key(&key) {
            order.push(key.clone());
        }
        groups.entry(key).or_default().push(job);
    }
    order.iter().filter_map(|k| groups.remove(k)).collect()
}

/// A configuration as HParams values.
fn hparams(config: &Config) -> Vec<(String, HParam)> {
    config
        .0
        .iter()
        .map(|(h, v)| {
            let value = match v {
                Value::Number(x) => HParam::Number(*x),
                Value::Text(t) => HParam::Text(t.clone()),
            };
            (h.name().to_string(), value)
        })
        .collect()
}

/// Writes a finished (done, halted or failed) trial's HParams session into its own run
/// folder `trial-NNN` of the log folder: its hyperparameters and final metrics.
fn session(dir: &Path, row: &TrialRow, metric: &str) -> Result<()> {
    if matches!(row.status, Status::Paused | Status::Stopped) {
        return Ok(());
    }
    let mut board = TensorBoard::new(trial_log(dir, row.id))?;
    board.session_start(&hparams(&row.config))?;
    let mut values = Vec::new();
    if let Some(m) = row.metric {
        values.push((format!("val_{metric}"), m));
    }
    if let Some(l) = row.loss {
        values.push(("val_loss".to_string(), l));
    }
    board.scalars(row.epochs as i64, &values)?;
    let status = match row.status {
        Status::Failed => SessionStatus::Failure,
        _ => SessionStatus::Success,
    };
    board.session_end(status)?;
    board.flush()
}

/// The log folder of trial `id`'s HParams session.
fn trial_log(dir: &Path, id: usize) -> PathBuf {
    dir.join(format!("trial-{id:03}"))
}
