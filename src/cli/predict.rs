//! `kiln predict`: the class and class probabilities (or the value) for every row of
//! a CSV or IDX images file, as CSV.

use std::path::{Path, PathBuf};

use clap::Args;
use kiln::data::{csv, idx};
use kiln::{Loss, Result, Trainer};

use super::checkpoint::{CheckpointArgs, Opened};
use super::record::RunRecord;
use super::{bad_arg, io_error};

/// The long help of `kiln predict`.
pub const LONG_ABOUT: &str = "\
Predict classes (or values) for the rows of a CSV or IDX file.

The input is a CSV file with a header row (the model's features, with or without
the label column, which is ignored) or an IDX images file such as
t10k-images-idx3-ubyte (gzipped or not). A file is read as CSV when its name ends
in .csv or when --delimiter is given; its fields are separated as the training
data's were unless --delimiter says otherwise. Features are scaled as at
training time.

The output is CSV with a header and one line per input row: the row number (from
0), the predicted class and the probability of each class; for regression
models, the row number and the predicted value.";

/// Examples for `kiln predict --help`.
pub const EXAMPLES: &str = "\
Examples:
  # Classes of MNIST test images, written to predictions.csv
  kiln predict --checkpoint runs/mnist --input data/mnist/t10k-images-idx3-ubyte.gz --output predictions.csv

  # A CSV printed to the terminal
  kiln predict --checkpoint runs/iris --input new-flowers.csv

  # Tab-separated rows
  kiln predict --checkpoint runs/iris --input new-flowers.txt --delimiter tab

  # Three runs as one ensemble, their probabilities averaged
  kiln predict --ensemble runs/a,runs/b,runs/c --input new-flowers.csv";

/// Options of `kiln predict`.
#[derive(Args, Debug)]
pub struct PredictArgs {
    #[command(flatten)]
    pub run: CheckpointArgs,

    /// Rows to predict: a .csv file, or an IDX images file
    #[arg(long, value_name = "FILE")]
    pub input: PathBuf,

    /// Read --input as CSV whose fields this separates: a character such as , or ; or |,
    /// tab, space, or 0xNN [default: the training run's, a comma unless it gave one]
    #[arg(long, value_name = "CHAR", value_parser = super::data_source::parse_delimiter)]
    pub delimiter: Option<u8>,

    /// Write the predictions here instead of to standard output
    #[arg(long, value_name = "FILE.csv")]
    pub output: Option<PathBuf>,
}

/// Runs `kiln predict`.
pub fn run(args: PredictArgs) -> Result<()> {
    if !args.run.ensemble.is_empty() {
        let text = ensemble_csv(&args)?;
        return write(&args, &text);
    }
    let Opened {
        record,
        mut trainer,
        batch_size,
    } = args.run.open()?;
    one_output(&trainer, "kiln predict")?;
    if record.data.starts_with("text:") {
        // One row of classes per sample is what the CSV holds; a language model has
        // classes at every position, and its use is generating text.
        return Err(bad_arg(
            "--checkpoint",
            format!(
                "{} is a language model of {}: kiln predict writes one class per row, not text",
                args.run.path()?.display(),
                record.data
            ),
        ));
    }
    let mut x = read_rows(&args.input, args.delimiter, &record)?;
    if let Some(s) = record.scaler() {
        s.transform(&mut x)?;
    }
    let out = trainer.predict(&x, batch_size)?;
    let outputs = trainer.model.output_width();
    let text = to_csv(&out, outputs, is_classifier(&trainer));
    write(&args, &text)
}

/// The `--ensemble` runs' combined predictions for the rows of --input as CSV; the
/// first run says how to read the file, and each member scales the rows itself.
fn ensemble_csv(args: &PredictArgs) -> Result<String> {
    let mut opened = args.run.open_ensemble()?;
    let first = opened
        .records
        .first()
        .ok_or_else(|| bad_arg("--ensemble", "name at least one run folder"))?;
    let x = read_rows(&args.input, args.delimiter, first)?;
    let ens = &mut opened.ensemble;
    let probs = ens.predict_proba(&x, opened.batch_size)?;
    let predicted = ens.predict_classes(&x, opened.batch_size, args.run.combine)?;
    let rows: Vec<Vec<f32>> = probs
        .chunks_exact(ens.classes())
        .map(<[f32]>::to_vec)
        .collect();
    Ok(class_csv(&rows, &predicted, ens.classes()))
}

/// Writes the predictions to --output, or to standard output.
fn write(args: &PredictArgs, text: &str) -> Result<()> {
    match &args.output {
        Some(path) => {
            std::fs::write(path, text).map_err(|e| io_error(path, e))?;
            let rows = text.lines().count().saturating_sub(1);
            eprintln!("wrote {rows} predictions to {}", path.display());
        }
        None => super::write_out(text),
    }
    Ok(())
}

/// The features of every row of `path`, unscaled, checked against the run; a CSV
/// file's fields are separated by `delimiter` when given.
fn read_rows(path: &Path, delimiter: Option<u8>, record: &RunRecord) -> Result<Vec<f32>> {
    let f = record.features;
    let is_csv = path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("csv"));
    if !is_csv && delimiter.is_none() {
        let (pixels, n, rows, cols) = idx::read_images(path)?;
        if rows * cols != f {
            return Err(bad_arg(
                "--input",
                format!(
                    "{}: {n} images of {rows}x{cols} = {} pixels, but the model takes {f} features",
                    path.display(),
                    rows * cols
                ),
            ));
        }
        return Ok(pixels.into_iter().map(f32::from).collect());
    }
    let delimiter = delimiter.or(record.delimiter).unwrap_or(b',');
    let options = |label: Option<&str>| csv::Options::new(label, Some(false)).delimiter(delimiter);
    // Read as regression with the last column as target, which accepts any numbers.
    let all = csv::load_with(path, &options(None))?;
    let columns = all.features + 1;
    if columns == f {
        // No label column: the "target" read is the last feature.
        let mut x = Vec::with_capacity(all.n * f);
        for (row, &last) in all.x.chunks_exact(all.features).zip(&all.y) {
            x.extend_from_slice(row);
            x.push(last);
        }
        return Ok(x);
    }
    if columns == f + 1 {
        let label = csv_label(record);
        if label.is_none() {
            return Ok(all.x);
        }
        return Ok(csv::load_with(path, &options(label.as_deref()))?.x);
    }
    Err(bad_arg(
        "--input",
        format!(
            "{} has {columns} columns, but the model takes {f} features (plus, optionally, the label column)",
            path.display()
        ),
    ))
}

/// The label column named in the run's `csv:FILE:LABEL` source, if any.
fn csv_label(record: &RunRecord) -> Option<String> {
    match record.data.parse() {
        Ok(super::data_source::DataSource::Csv { label, .. }) => label,
        _ => None,
    }
}

/// Refuses a model with several outputs: `command` answers with one.
pub fn one_output(trainer: &Trainer, command: &str) -> Result<()> {
    match trainer.output_losses() {
        None => Ok(()),
        Some(outputs) => {
            let names: Vec<String> = outputs.into_iter().map(|o| o.name).collect();
            Err(bad_arg(
                "--checkpoint",
                format!(
                    "the model has several outputs ({}); {command} writes one, so predict \
                     with the library's Trainer::predict_outputs",
                    names.join(", ")
                ),
            ))
        }
    }
}

/// Whether the trainer's loss makes its outputs class probabilities (not values).
pub fn is_classifier(trainer: &Trainer) -> bool {
    !matches!(trainer.loss(), Loss::Mse | Loss::Mae)
}

/// Every class's probability from one row of outputs: one sigmoid output is the
/// probability of class 1.
pub fn class_probabilities(row: &[f32]) -> Vec<f32> {
    match row {
        [p] => vec![1.0 - p, *p],
        _ => row.to_vec(),
    }
}

/// The first of equal maxima, as the library's argmax picks.
pub fn best_class(probs: &[f32]) -> usize {
    probs
        .iter()
        .enumerate()
        .fold(0, |b, (c, &p)| if p > probs[b] { c } else { b })
}

/// Predictions as CSV: row, predicted class and probabilities, or row and value.
fn to_csv(out: &[f32], outputs: usize, classify: bool) -> String {
    let mut text = String::new();
    if !classify {
        text += "row,prediction\n";
        for (i, row) in out.chunks_exact(outputs).enumerate() {
            let values: Vec<String> = row.iter().map(|v| v.to_string()).collect();
            text += &format!("{i},{}\n", values.join(","));
        }
        return text;
    }
    let probs: Vec<Vec<f32>> = out.chunks_exact(outputs).map(class_probabilities).collect();
    let predicted: Vec<usize> = probs.iter().map(|p| best_class(p)).collect();
    class_csv(&probs, &predicted, outputs.max(2))
}

/// Class predictions as CSV: row, predicted class and each of `classes` probabilities.
fn class_csv(probs: &[Vec<f32>], predicted: &[usize], classes: usize) -> String {
    let mut text = String::from("row,predicted");
    for c in 0..classes {
        text += &format!(",prob_{c}");
    }
    text += "\n";
    for (i, (row, class)) in probs.iter().zip(predicted).enumerate() {
        text += &format!("{i},{class}");
        for p in row {
            text += &format!(",{p:.6}");
        }
        text += "\n";
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_has_a_line_per_row_with_the_argmax() {
        let t = to_csv(&[0.1, 0.7, 0.2, 0.5, 0.25, 0.25], 3, true);
        assert_eq!(
            t,
            "row,predicted,prob_0,prob_1,prob_2\n\
             0,1,0.100000,0.700000,0.200000\n\
             1,0,0.500000,0.250000,0.250000\n"
        );
        let b = to_csv(&[0.8], 1, true);
        assert_eq!(b, "row,predicted,prob_0,prob_1\n0,1,0.200000,0.800000\n");
        assert_eq!(to_csv(&[2.5], 1, false), "row,prediction\n0,2.5\n");
    }
}
