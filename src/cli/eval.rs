//! `kiln eval`: a checkpoint's loss and metrics on test rows, and its confusion matrix.

use std::path::Path;

use clap::Args;
use kiln::data::Dataset;
use kiln::ops::metrics::ConfusionMatrix;
use kiln::train::Evaluation;
use kiln::{Loss, Metric, Result, Trainer};

use super::checkpoint::{CheckpointArgs, Opened};
use super::data_source::{self, DataSource};
use super::model_args;
use super::record::RunRecord;
use super::{bad_arg, train};

/// The long help of `kiln eval`.
pub const LONG_ABOUT: &str = "\
Evaluate a checkpoint: loss, metrics and the confusion matrix.

Without --data, evaluates on the test rows of the training run (the same rows,
scaled the same way). With --data, evaluates on that source instead: the test
files of an IDX folder, or every row of a CSV file (or the --test-split fraction
of them). Features are always scaled as at training time.

Classifiers report accuracy, macro precision, recall and F1, and a confusion
matrix whose rows are the true classes and columns the predicted ones;
regression models report MSE and MAE.";

/// Examples for `kiln eval --help`.
pub const EXAMPLES: &str = "\
Examples:
  # The test rows of the run in runs/digits
  kiln eval --checkpoint runs/digits

  # The t10k files of a Fashion-MNIST folder, on the CPU
  kiln eval --checkpoint runs/fashion --data fashion:data/fashion --device cpu

  # Every row of another CSV file with the same columns
  kiln eval --checkpoint runs/iris --data csv:iris-new.csv:species

  # Three runs as one ensemble, by majority vote, on the first run's test rows
  kiln eval --ensemble runs/a,runs/b,runs/c --combine vote";

/// Options of `kiln eval`.
#[derive(Args, Debug)]
pub struct EvalArgs {
    #[command(flatten)]
    pub run: CheckpointArgs,

    /// Rows to evaluate on (digits, mnist:DIR, fashion:DIR, csv:FILE[:LABEL_COLUMN])
    /// [default: the training run's test rows]
    #[arg(long, value_name = "SOURCE")]
    pub data: Option<DataSource>,

    /// With --data: evaluate on this fraction of its rows, held out as `kiln train` does
    /// with the run's seed [default: 0, every row]
    #[arg(long, value_name = "FRACTION", requires = "data")]
    pub test_split: Option<f32>,

    /// With a CSV --data: what separates its fields, a character such as , or ; or |,
    /// tab, space, or 0xNN [default: the training run's, a comma unless it gave one]
    #[arg(long, value_name = "CHAR", requires = "data", value_parser = data_source::parse_delimiter)]
    pub delimiter: Option<u8>,
}

/// Runs `kiln eval`.
pub fn run(args: EvalArgs) -> Result<()> {
    if !args.run.ensemble.is_empty() {
        return run_ensemble(&args);
    }
    let Opened {
        record,
        trainer,
        batch_size,
    } = args.run.open()?;
    let dir = args.run.path()?;
    let (name, mut test) = test_rows(&args, &record, Some(dir))?;
    data_source::apply(record.scaler().as_ref(), &mut test)?;
    let epochs = trainer.epochs_done();
    let e = evaluate(trainer, &test, batch_size)?;

    say!(
        "checkpoint: {} (after {epochs} epochs)",
        args.run.path()?.display()
    );
    say!("data:       {name}, {}", data_source::describe(&test));
    super::write_out(&report(&e));
    Ok(())
}

/// `kiln eval --ensemble`: the ensemble's loss and accuracy, then each member's accuracy,
/// on the first run's test rows (or --data), unscaled: each member scales them itself.
fn run_ensemble(args: &EvalArgs) -> Result<()> {
    let mut opened = args.run.open_ensemble()?;
    let first = opened
        .records
        .first()
        .ok_or_else(|| bad_arg("--ensemble", "name at least one run folder"))?;
    let (name, test) = test_rows(args, first, None)?;
    let combine = args.run.combine;
    let e = opened
        .ensemble
        .evaluate(&test.x, &test.y, opened.batch_size, combine)?;
    say!(
        "ensemble:   {} members, combined by {combine:?}",
        e.members.len()
    );
    say!("data:       {name}, {}", data_source::describe(&test));
    let mut out = format!(
        "{:<11} {:.4}\n{:<11} {:.4}\n",
        "loss", e.loss, "accuracy", e.accuracy
    );
    for (member, acc) in &e.members {
        out += &format!("member {member} accuracy {acc:.4}\n");
    }
    super::write_out(&out);
    Ok(())
}

/// The rows to evaluate on, unscaled, and their description: the run's test rows or
/// those of --data.
/// `dir` is the run's folder, whose saved vocabulary encodes text.
fn test_rows(args: &EvalArgs, record: &RunRecord, dir: Option<&Path>) -> Result<(String, Dataset)> {
    let (name, test) = match &args.data {
        None => {
            let (_, test) = train::load_recorded(record, dir)?;
            let test = test.filter(|t| t.n > 0).ok_or_else(|| {
                bad_arg(
                    "--data",
                    "the training run kept no test rows (--test-split 0); name the rows to evaluate",
                )
            })?;
            (format!("{} (the run's test rows)", record.data), test)
        }
        Some(source) if source.is_text() => {
            // The held-out tail, encoded as the run was: a character outside its
            // vocabulary is an error.
            let vocab = train::saved_vocab(dir)?;
            let (split, _) = source.load_text(record.features, vocab)?;
            let test = split.test.unwrap_or(split.train);
            (format!("{source} (its last 10%)"), test)
        }
        Some(source) => {
            let delimiter =
                data_source::delimiter(args.delimiter, record.delimiter, &[Some(source)])?;
            let split =
                source.load(None, args.test_split.unwrap_or(0.0), record.seed, delimiter)?;
            let test = match split.test {
                Some(t) if t.n > 0 => t,
                _ => split.train,
            };
            (source.to_string(), test)
        }
    };
    let mut test = test;
    if record.classes > 0 {
        // A file lacking some class is read as regression; its labels are still class ids.
        test.classes = test.classes.max(record.classes);
    }
    Ok((name, test))
}

/// The trainer's loss and metrics on `test`: a one-output model compiled again for the
/// full set of metrics (the weights are unchanged), one with several outputs with its own,
/// every output on the label column as it was trained.
fn evaluate(trainer: Trainer, test: &Dataset, batch_size: usize) -> Result<Evaluation> {
    if trainer.output_losses().is_some() {
        let mut trainer = trainer;
        let y = super::outputs::targets(&trainer, &test.y)?;
        return trainer.evaluate(&test.x, &y, batch_size);
    }
    model_args::check_fits(&trainer.model, trainer.loss(), test, "--data")?;
    let loss = model_args::for_class_ids(trainer.loss());
    let optimizer = trainer.optimizer().clone();
    let outputs = trainer.model.output_width();
    let mut trainer = trainer
        .model
        .compile(loss, optimizer, &eval_metrics(loss, outputs))?;
    trainer.evaluate(&test.x, &test.y, batch_size)
}

/// Metrics for evaluation: everything that describes a classifier, or both errors.
fn eval_metrics(loss: Loss, outputs: usize) -> Vec<Metric> {
    match loss {
        Loss::Mse | Loss::Mae => vec![Metric::Mse, Metric::Mae],
        _ => {
            let accuracy = if outputs == 1 {
                Metric::BinaryAccuracy
            } else {
                Metric::Accuracy
            };
            vec![accuracy, Metric::Precision, Metric::Recall, Metric::F1]
        }
    }
}

/// Loss and metrics one per line, then the confusion matrix.
fn report(e: &Evaluation) -> String {
    // Names line up, however long an output's name makes them.
    let width = e.metrics.iter().map(|(n, _)| n.len()).fold(11, usize::max);
    let mut out = format!("{:<width$} {:.4}\n", "loss", e.loss);
    for (name, v) in &e.metrics {
        out += &format!("{name:<width$} {v:.4}\n");
    }
    if let Some(c) = &e.confusion {
        out += "\n";
        out += &confusion_table(c);
    }
    out
}

/// The confusion matrix as a table: a row per true class, a column per prediction,
/// then each class's count and recall.
fn confusion_table(c: &ConfusionMatrix) -> String {
    let n = c.classes();
    let width = c.total().to_string().len().max(n.to_string().len()).max(3);
    let mut out = String::from("confusion matrix (rows: true class, columns: predicted class)\n");
    out += &format!("{:>6} ", "true");
    for p in 0..n {
        out += &format!(" {p:>width$}");
    }
    out += &format!(" {:>width$} {:>7}\n", "all", "recall");
    for t in 0..n {
        out += &format!("{t:>6} ");
        for p in 0..n {
            out += &format!(" {:>width$}", c.count(t, p));
        }
        out += &format!(" {:>width$} {:>7.4}\n", c.support(t), c.recall(t));
    }
    out += &format!("{:>6} ", "all");
    for p in 0..n {
        out += &format!(" {:>width$}", c.predicted(p));
    }
    out += &format!(" {:>width$}\n", c.total());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn confusion_table_has_a_row_per_class_and_totals() {
        let c = ConfusionMatrix::new(2, vec![3, 1, 0, 4]).unwrap();
        let t = confusion_table(&c);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 5, "{t}");
        assert!(lines[2].trim_start().starts_with("0 "), "{t}");
        assert!(lines[2].ends_with("0.7500"), "{t}");
        assert!(lines[4].trim_end().ends_with('8'), "{t}");
    }
}
