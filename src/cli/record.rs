//! `kiln-run.txt`: what a run folder needs besides the checkpoint (the data source,
//! its split and scaling, the training options), so that `eval`, `predict` and
//! `train --resume` prepare data exactly as training did; and reading `history.csv` back.

use std::path::Path;

use kiln::data::Scaler;
use kiln::train::{EpochLog, History};
use kiln::Result;

use super::{bad_arg, io_error};

/// The record's file name inside a run folder.
pub const FILE: &str = "kiln-run.txt";

/// How a run prepared its data and trained.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RunRecord {
    /// The `--data` source, as typed.
    pub data: String,
    /// The `--test-data` source, if any.
    pub test_data: Option<String>,
    /// The `--delimiter` of CSV sources, when not a comma.
    pub delimiter: Option<u8>,
    /// Fraction of rows held out for testing (sources without their own test set).
    pub test_split: f32,
    /// Fraction of training rows held out for validation.
    pub validation_split: f32,
    /// Seed of the initial weights, the test split and the shuffling.
    pub seed: u64,
    /// Rows per step.
    pub batch_size: usize,
    /// Epochs asked for, in all.
    pub epochs: usize,
    /// The `--scale` choice.
    pub scale: String,
    /// Features per row.
    pub features: usize,
    /// Classes, 0 for regression.
    pub classes: usize,
    /// Per-feature shift and divisor of the scaling, empty for none.
    pub shift: Vec<f32>,
    /// See `shift`.
    pub divisor: Vec<f32>,
    /// Widths of the dense layers, input first (a description: the checkpoint holds the model).
    pub layers: Vec<usize>,
    /// Activation of the hidden layers made by --layers; empty for a model file.
    pub activation: String,
    /// Loss name (a description, as the three below).
    pub loss: String,
    /// Optimizer name.
    pub optimizer: String,
    /// Learning rate.
    pub lr: f32,
}

fn join<T: ToString>(values: &[T]) -> String {
    values
        .iter()
        .map(|v| v.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

fn split<T: std::str::FromStr>(key: &str, text: &str) -> std::result::Result<Vec<T>, String> {
    if text.is_empty() {
        return Ok(Vec::new());
    }
    text.split(',')
        .map(|v| v.trim().parse().map_err(|_| format!("{key}: '{v}'")))
        .collect()
}

impl RunRecord {
    /// The fitted scaler, if the run scaled its features.
    pub fn scaler(&self) -> Option<Scaler> {
        if self.shift.is_empty() {
            None
        } else {
            Some(Scaler {
                shift: self.shift.clone(),
                divisor: self.divisor.clone(),
            })
        }
    }

    /// Remembers a fitted scaler.
    pub fn set_scaler(&mut self, scaler: Option<&Scaler>) {
        (self.shift, self.divisor) = match scaler {
            Some(s) => (s.shift.clone(), s.divisor.clone()),
            None => (Vec::new(), Vec::new()),
        };
    }

    /// The record as `key = value` lines.
    pub fn to_text(&self) -> String {
        let mut out = String::from(
            "# Written by `kiln train`: how this run prepared its data, read by\n\
             # `kiln eval`, `kiln predict` and `kiln train --resume`.\n",
        );
        let mut line = |k: &str, v: String| out += &format!("{k} = {v}\n");
        line("data", self.data.clone());
        if let Some(t) = &self.test_data {
            line("test_data", t.clone());
        }
        if let Some(d) = self.delimiter {
            line("delimiter", kiln::data::csv::delimiter_name(d));
        }
        line("test_split", self.test_split.to_string());
        line("validation_split", self.validation_split.to_string());
        line("seed", self.seed.to_string());
        line("batch_size", self.batch_size.to_string());
        line("epochs", self.epochs.to_string());
        line("scale", self.scale.clone());
        line("features", self.features.to_string());
        line("classes", self.classes.to_string());
        line("layers", join(&self.layers));
        line("activation", self.activation.clone());
        line("loss", self.loss.clone());
        line("optimizer", self.optimizer.clone());
        line("lr", self.lr.to_string());
        // f32 Display prints the shortest text that parses back to the same value.
        line("shift", join(&self.shift));
        line("divisor", join(&self.divisor));
        out
    }

    /// Parses `to_text`'s output; `what` names it in errors.
    pub fn parse(text: &str, what: &str) -> Result<RunRecord> {
        let mut r = RunRecord::default();
        let bad = |detail: String| kiln::Error::Format {
            what: what.to_string(),
            detail,
        };
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (key, value) = line
                .split_once('=')
                .ok_or_else(|| bad(format!("line {} has no '='", i + 1)))?;
            let (key, value) = (key.trim(), value.trim());
            let number = |what: &str| format!("line {}: {what} '{value}' is not valid", i + 1);
            match key {
                "data" => r.data = value.to_string(),
                "test_data" => r.test_data = Some(value.to_string()),
                "delimiter" => {
                    r.delimiter = Some(
                        kiln::data::csv::parse_delimiter(value)
                            .map_err(|e| bad(format!("line {}: {e}", i + 1)))?,
                    )
                }
                "test_split" => r.test_split = value.parse().map_err(|_| bad(number(key)))?,
                "validation_split" => {
                    r.validation_split = value.parse().map_err(|_| bad(number(key)))?
                }
                "seed" => r.seed = value.parse().map_err(|_| bad(number(key)))?,
                "batch_size" => r.batch_size = value.parse().map_err(|_| bad(number(key)))?,
                "epochs" => r.epochs = value.parse().map_err(|_| bad(number(key)))?,
                "scale" => r.scale = value.to_string(),
                "features" => r.features = value.parse().map_err(|_| bad(number(key)))?,
                "classes" => r.classes = value.parse().map_err(|_| bad(number(key)))?,
                "layers" => r.layers = split(key, value).map_err(bad)?,
                "activation" => r.activation = value.to_string(),
                "loss" => r.loss = value.to_string(),
                "optimizer" => r.optimizer = value.to_string(),
                "lr" => r.lr = value.parse().map_err(|_| bad(number(key)))?,
                "shift" => r.shift = split(key, value).map_err(bad)?,
                "divisor" => r.divisor = split(key, value).map_err(bad)?,
                // Newer kiln versions may add keys; older ones skip them.
                _ => {}
            }
        }
        if r.data.is_empty() {
            return Err(bad("no 'data' line".into()));
        }
        if r.shift.len() != r.divisor.len() || (!r.shift.is_empty() && r.shift.len() != r.features)
        {
            return Err(bad(format!(
                "shift has {} values and divisor {}, expected {} (one per feature)",
                r.shift.len(),
                r.divisor.len(),
                r.features
            )));
        }
        Ok(r)
    }

    /// Writes the record into a run folder.
    pub fn save(&self, dir: &Path) -> Result<()> {
        let path = dir.join(FILE);
        std::fs::write(&path, self.to_text()).map_err(|e| io_error(&path, e))
    }

    /// Reads the record of a run folder.
    pub fn load(dir: &Path) -> Result<RunRecord> {
        let path = dir.join(FILE);
        let text = std::fs::read_to_string(&path).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                bad_arg(
                    "--checkpoint",
                    format!(
                        "{} is not a kiln run folder ({} is missing); give the --out folder of `kiln train`",
                        dir.display(),
                        FILE
                    ),
                )
            } else {
                io_error(&path, e)
            }
        })?;
        RunRecord::parse(&text, &path.display().to_string())
    }
}

/// Reads a `history.csv` written by `History::to_csv` back into epochs, so a resumed
/// run's history and curves cover the epochs before it.
pub fn parse_history(text: &str, what: &str) -> Result<History> {
    let bad = |detail: String| kiln::Error::Format {
        what: what.to_string(),
        detail,
    };
    let mut lines = text.lines().filter(|l| !l.trim().is_empty());
    let header: Vec<&str> = match lines.next() {
        Some(h) => h.split(',').collect(),
        None => return Ok(History::default()),
    };
    let mut history = History::default();
    for (i, line) in lines.enumerate() {
        let fields: Vec<&str> = line.split(',').collect();
        if fields.len() != header.len() {
            return Err(bad(format!(
                "row {} has {} fields, the header {}",
                i + 1,
                fields.len(),
                header.len()
            )));
        }
        let mut log = EpochLog::default();
        for (&name, &field) in header.iter().zip(&fields) {
            if field.is_empty() {
                continue;
            }
            let v: f64 = field
                .parse()
                .map_err(|_| bad(format!("row {}, {name}: '{field}' is not a number", i + 1)))?;
            match name {
                "epoch" => log.epoch = v as usize,
                "loss" => log.loss = v,
                "val_loss" => log.val_loss = Some(v),
                "lr" => log.lr = v as f32,
                "seconds" => log.seconds = v,
                _ => match name.strip_prefix("val_") {
                    Some(m) => log.val_metrics.push((m.to_string(), v)),
                    None => log.metrics.push((name.to_string(), v)),
                },
            }
        }
        history.epochs.push(log);
    }
    Ok(history)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_round_trips() {
        let r = RunRecord {
            data: "csv:a b.csv:label".into(),
            test_data: Some("csv:t.csv".into()),
            delimiter: Some(b'\t'),
            test_split: 0.2,
            validation_split: 0.1,
            seed: 7,
            batch_size: 32,
            epochs: 10,
            scale: "standardize".into(),
            features: 2,
            classes: 3,
            shift: vec![0.1, -3.5e-8],
            divisor: vec![1.0 / 3.0, 255.0],
            layers: vec![2, 8, 3],
            activation: "relu".into(),
            loss: "mse".into(),
            optimizer: "adam".into(),
            lr: 0.001,
        };
        assert_eq!(RunRecord::parse(&r.to_text(), "t").unwrap(), r);
        for d in [b';', b' ', b'=', b'#', 0x1f] {
            let r = RunRecord {
                delimiter: Some(d),
                ..r.clone()
            };
            assert_eq!(RunRecord::parse(&r.to_text(), "t").unwrap(), r);
        }
        assert!(RunRecord::parse("data = digits\ndelimiter = ab\n", "t").is_err());
        assert!(RunRecord::parse("seed = 1\n", "t").is_err());
    }

    #[test]
    fn history_reads_back() {
        let mut h = History::default();
        for e in 1..=2 {
            h.epochs.push(EpochLog {
                epoch: e,
                loss: 1.0 / e as f64,
                metrics: vec![("accuracy".into(), 0.5)],
                val_loss: Some(2.0),
                val_metrics: vec![("accuracy".into(), 0.25)],
                lr: 0.001,
                seconds: 0.5,
            });
        }
        let back = parse_history(&h.to_csv(), "h").unwrap();
        assert_eq!(back.to_csv(), h.to_csv());
    }
}
