//! A search's results: `trials.csv` (one row per trial, rewritten atomically after every
//! trial, which is what a resumed search reads back), the ranking, and the best trials'
//! run folders.

use std::path::{Path, PathBuf};

use super::space::{Config, Hyper, Value};
use crate::error::{Error, Result, TuneError};

/// The results file in a search folder.
pub const TRIALS_FILE: &str = "trials.csv";
/// The folder of the trials' run folders, `trials/001`, `trials/002`, ...
pub const TRIALS_DIR: &str = "trials";
/// The copy of the best completed trial's run folder.
pub const BEST_DIR: &str = "best";
/// Inside `best/`: which trial it is a copy of, and after how many epochs.
const BEST_MARK: &str = "kiln-best.txt";

/// How a trial ended (so far).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    /// Trained all its epochs.
    Done,
    /// Reached a successive-halving rung and waits for the cut.
    Paused,
    /// Cut by successive halving: others did better at its rung.
    Halted,
    /// Cut short by the time budget; a resumed search continues it.
    Stopped,
    /// Training failed (diverged, ran out of memory); not retried.
    Failed,
}

impl Status {
    /// The name in trials.csv.
    pub fn name(self) -> &'static str {
        match self {
            Status::Done => "done",
            Status::Paused => "paused",
            Status::Halted => "halted",
            Status::Stopped => "stopped",
            Status::Failed => "failed",
        }
    }

    fn parse(s: &str) -> Option<Status> {
        [
            Status::Done,
            Status::Paused,
            Status::Halted,
            Status::Stopped,
            Status::Failed,
        ]
        .into_iter()
        .find(|st| st.name() == s)
    }

    /// Order in the ranking: finished trials first, failed ones last.
    fn rank(self) -> u8 {
        match self {
            Status::Done => 0,
            Status::Paused | Status::Halted | Status::Stopped => 1,
            Status::Failed => 2,
        }
    }
}

/// One trial's line of trials.csv.
#[derive(Clone, Debug, PartialEq)]
pub struct TrialRow {
    /// 1-based trial number, its folder `trials/NNN`.
    pub id: usize,
    /// Its hyperparameters.
    pub config: Config,
    /// Epochs trained, in all.
    pub epochs: usize,
    /// The validation metric after the last epoch (accuracy for classifiers).
    pub metric: Option<f64>,
    /// The validation loss after the last epoch.
    pub loss: Option<f64>,
    /// Seconds spent training it, in all.
    pub seconds: f64,
    /// How it ended.
    pub status: Status,
}

/// All trials of a search.
#[derive(Clone, Debug, PartialEq)]
pub struct Trials {
    /// The metric ranked on, as validation reports it ("accuracy", "mae"); higher is
    /// better for accuracies, otherwise the validation loss ranks (lower is better).
    pub metric: String,
    /// The hyperparameters varied, in column order.
    pub params: Vec<Hyper>,
    /// The rows, in trial order.
    pub rows: Vec<TrialRow>,
}

/// The run folder of trial `id` in the search folder `dir`.
pub fn trial_dir(dir: &Path, id: usize) -> PathBuf {
    dir.join(TRIALS_DIR).join(format!("{id:03}"))
}

impl Trials {
    /// No trials yet.
    pub fn new(metric: &str, params: Vec<Hyper>) -> Trials {
        Trials {
            metric: metric.to_string(),
            params,
            rows: Vec::new(),
        }
    }

    /// Whether a higher metric is better (accuracies); otherwise the loss ranks.
    pub fn maximizes(&self) -> bool {
        self.metric.contains("accuracy")
    }

    /// A row's score, higher better; none for a trial without results.
    pub fn score(&self, row: &TrialRow) -> Option<f64> {
        if self.maximizes() {
            row.metric
        } else {
            row.loss.map(|l| -l)
        }
        .filter(|s| s.is_finite())
    }

    /// The row of trial `id`.
    pub fn get(&self, id: usize) -> Option<&TrialRow> {
        self.rows.iter().find(|r| r.id == id)
    }

    /// Replaces trial `row.id`'s row, or adds it, keeping trial order.
    pub fn put(&mut self, row: TrialRow) {
        match self.rows.iter_mut().find(|r| r.id == row.id) {
            Some(slot) => *slot = row,
            None => {
                self.rows.push(row);
                self.rows.sort_by_key(|r| r.id);
            }
        }
    }

    /// The rows best first: finished before cut short before failed, then by score.
    pub fn ranked(&self) -> Vec<&TrialRow> {
        let mut rows: Vec<&TrialRow> = self.rows.iter().collect();
        // Missing values sort last; equal metrics go to the lower loss, then the earlier trial.
        let lower_first = |x: Option<f64>, y: Option<f64>| match (x, y) {
            (Some(x), Some(y)) => x.total_cmp(&y),
            (Some(_), None) => std::cmp::Ordering::Less,
            (None, Some(_)) => std::cmp::Ordering::Greater,
            (None, None) => std::cmp::Ordering::Equal,
        };
        rows.sort_by(|a, b| {
            a.status
                .rank()
                .cmp(&b.status.rank())
                .then_with(|| lower_first(self.score(a).map(|s| -s), self.score(b).map(|s| -s)))
                .then_with(|| lower_first(a.loss, b.loss))
                .then_with(|| a.id.cmp(&b.id))
        });
        rows
    }

    /// The completed trials (status done), best first.
    pub fn best(&self, n: usize) -> Vec<&TrialRow> {
        let mut done: Vec<&TrialRow> = self
            .ranked()
            .into_iter()
            .filter(|r| r.status == Status::Done && self.score(r).is_some())
            .collect();
        done.truncate(n);
        done
    }

    /// trials.csv's text: `id`, each hyperparameter, `epochs`, `val_{metric}`,
    /// `val_loss`, `seconds`, `status`.
    pub fn to_csv(&self) -> String {
        let mut out = String::from("id");
        for h in &self.params {
            out += &format!(",{h}");
        }
        out += &format!(",epochs,val_{},val_loss,seconds,status\n", self.metric);
        let opt = |v: Option<f64>| v.map_or(String::new(), |x| format!("{x:.6}"));
        for r in &self.rows {
            out += &r.id.to_string();
            for h in &self.params {
                let v = r.config.get(*h).map_or(String::new(), |v| v.to_string());
                out += &format!(",{v}");
            }
            out += &format!(
                ",{},{},{},{:.3},{}\n",
                r.epochs,
                opt(r.metric),
                opt(r.loss),
                r.seconds,
                r.status.name()
            );
        }
        out
    }

    /// Reads trials.csv's text back (`what` names it in errors).
    pub fn parse(text: &str, what: &str) -> Result<Trials> {
        let bad = |line: usize, detail: String| {
            Error::format(
                format!("{what} (a kiln trials.csv)"),
                format!("line {line}: {detail}"),
            )
        };
        let mut lines = text.lines();
        let header: Vec<&str> = lines.next().unwrap_or("").split(',').collect();
        let n = header.len();
        if n < 6 || header[0] != "id" || header[n - 3] != "val_loss" || header[n - 1] != "status" {
            return Err(bad(1, format!("unexpected header {header:?}")));
        }
        let metric = header[n - 4].strip_prefix("val_").unwrap_or(header[n - 4]);
        let params = header[1..n - 5]
            .iter()
            .map(|h| Hyper::parse(h))
            .collect::<Result<Vec<_>>>()?;
        let mut trials = Trials::new(metric, params);
        for (i, line) in lines.enumerate().filter(|(_, l)| !l.trim().is_empty()) {
            let f: Vec<&str> = line.split(',').collect();
            if f.len() != n {
                return Err(bad(
                    i + 2,
                    format!("{} fields, the header has {n}", f.len()),
                ));
            }
            let num = |s: &str| -> Result<Option<f64>> {
                match s.trim() {
                    "" => Ok(None),
                    t => t
                        .parse()
                        .map(Some)
                        .map_err(|_| bad(i + 2, format!("'{t}' is not a number"))),
                }
            };
            let int = |s: &str| {
                s.trim()
                    .parse::<usize>()
                    .map_err(|_| bad(i + 2, format!("'{s}' is not a count")))
            };
            let config = trials
                .params
                .iter()
                .zip(&f[1..n - 5])
                .map(|(h, v)| Ok((*h, Value::parse(*h, v)?)))
                .collect::<Result<Vec<_>>>()?;
            let status = Status::parse(f[n - 1].trim())
                .ok_or_else(|| bad(i + 2, format!("unknown status '{}'", f[n - 1])))?;
            trials.rows.push(TrialRow {
                id: int(f[0])?,
                config: Config(config),
                epochs: int(f[n - 5])?,
                metric: num(f[n - 4])?,
                loss: num(f[n - 3])?,
                seconds: num(f[n - 2])?.unwrap_or(0.0),
                status,
            });
        }
        Ok(trials)
    }

    /// Reads `dir/trials.csv`; none when the search has not written it yet.
    pub fn load(dir: &Path) -> Result<Option<Trials>> {
        let path = dir.join(TRIALS_FILE);
        match std::fs::read_to_string(&path) {
            Ok(text) => Trials::parse(&text, &path.display().to_string()).map(Some),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::io(&path, e)),
        }
    }

    /// Writes `dir/trials.csv` atomically: a killed search leaves the old file or the new.
    pub fn save(&self, dir: &Path) -> Result<()> {
        write_atomic(&dir.join(TRIALS_FILE), &self.to_csv())
    }

    /// Makes `dir/best` a copy of the best completed trial's run folder (when that changed).
    pub fn update_best(&self, dir: &Path) -> Result<()> {
        let Some(best) = self.best(1).first().copied() else {
            return Ok(());
        };
        let mark = format!("trial = {}\nepochs = {}\n", best.id, best.epochs);
        let target = dir.join(BEST_DIR);
        if std::fs::read_to_string(target.join(BEST_MARK))
            .ok()
            .as_deref()
            == Some(&mark)
        {
            return Ok(());
        }
        let fresh = dir.join(format!("{BEST_DIR}.tmp"));
        let _ = std::fs::remove_dir_all(&fresh);
        copy_files(&trial_dir(dir, best.id), &fresh)?;
        write_atomic(&fresh.join(BEST_MARK), &mark)?;
        if target.exists() {
            std::fs::remove_dir_all(&target).map_err(|e| Error::io(&target, e))?;
        }
        std::fs::rename(&fresh, &target).map_err(|e| Error::io(&target, e))
    }
}

/// The run folders of the `n` best completed trials of the search in `dir`, best first
/// (fewer when fewer completed): the members of `best:N:DIR` ensembles.
pub fn best_runs(dir: impl AsRef<Path>, n: usize) -> Result<Vec<PathBuf>> {
    let dir = dir.as_ref();
    if n == 0 {
        return Err(TuneError::NoBest("best:N:DIR needs N of at least 1".into()).into());
    }
    let Some(trials) = Trials::load(dir)? else {
        return Err(TuneError::NoSearch(dir.display().to_string()).into());
    };
    let best: Vec<PathBuf> = trials
        .best(n)
        .iter()
        .map(|r| trial_dir(dir, r.id))
        .collect();
    if best.is_empty() {
        return Err(TuneError::NoBest(format!(
            "the search in {} has no completed trial yet",
            dir.display()
        ))
        .into());
    }
    Ok(best)
}

/// Writes `text` to `path` through a temporary file and a rename.
fn write_atomic(path: &Path, text: &str) -> Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).map_err(|e| Error::io(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))
}

/// Copies the files (not subfolders) of `from` into a new folder `to`.
fn copy_files(from: &Path, to: &Path) -> Result<()> {
    std::fs::create_dir_all(to).map_err(|e| Error::io(to, e))?;
    let entries = std::fs::read_dir(from).map_err(|e| Error::io(from, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| Error::io(from, e))?;
        let path = entry.path();
        if path.is_file() {
            let dest = to.join(entry.file_name());
            std::fs::copy(&path, &dest).map_err(|e| Error::io(&dest, e))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(id: usize, metric: f64, status: Status) -> TrialRow {
        TrialRow {
            id,
            config: Config(vec![
                (Hyper::Units, Value::Number(8.0 * id as f64)),
                (Hyper::Optimizer, Value::Text("adam".into())),
            ]),
            epochs: 3,
            metric: Some(metric),
            loss: Some(metric / 4.0),
            seconds: 0.5,
            status,
        }
    }

    #[test]
    fn csv_round_trips_and_ranks_done_first() {
        let mut t = Trials::new("accuracy", vec![Hyper::Units, Hyper::Optimizer]);
        t.put(row(2, 0.9, Status::Done));
        t.put(row(1, 0.95, Status::Halted));
        t.put(row(3, 0.92, Status::Done));
        t.put(TrialRow {
            metric: None,
            loss: None,
            ..row(4, 0.0, Status::Failed)
        });
        let back = Trials::parse(&t.to_csv(), "t").unwrap();
        assert_eq!(back, t);
        let ids: Vec<usize> = t.ranked().iter().map(|r| r.id).collect();
        assert_eq!(ids, [3, 2, 1, 4]);
        let best: Vec<usize> = t.best(5).iter().map(|r| r.id).collect();
        assert_eq!(best, [3, 2]);
        let loss = Trials {
            metric: "mae".into(),
            ..t.clone()
        };
        assert_eq!(
            loss.ranked()[0].id,
            2,
            "without an accuracy the lower loss ranks first"
        );
    }
}
