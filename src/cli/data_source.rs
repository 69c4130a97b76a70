//! `--data` sources and `--scale` choices: parsing them, loading the train and test
//! sets, and scaling features the same way at training and prediction time.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use clap::Args;
use kiln::data::text::{self, Vocab};
use kiln::data::{self, Dataset, Scaler, Scaling};
use kiln::Result;

use super::bad_arg;
use super::record::RunRecord;

/// Rows per step when none is given: 32, or 128 for the large image sets (MNIST,
/// Fashion-MNIST), where a GPU step wants more rows.
const DEFAULT_BATCH: usize = 32;
const DEFAULT_IMAGE_BATCH: usize = 128;
const DEFAULT_VALIDATION: f32 = 0.1;
const DEFAULT_TEST_SPLIT: f32 = 0.2;
/// Tokens per row of text data when --context is not given.
const DEFAULT_CONTEXT: usize = 64;

/// The data options of `kiln train` and `kiln tune`: where the rows come from, how they
/// are split and scaled.
#[derive(Args, Debug, Clone, Default)]
pub struct DataArgs {
    /// Training data: digits (built in), mnist:DIR or fashion:DIR (a folder of IDX
    /// files train-* and t10k-*), csv:FILE[:LABEL_COLUMN] (header row, numeric
    /// values; the label is the last column unless named), or text:FILE[:bytes] (a
    /// language model's windows of --context characters, or bytes; the last 10% held
    /// out as test rows; the vocabulary saved as vocab.json) [default: digits]
    #[arg(long, value_name = "SOURCE")]
    pub data: Option<DataSource>,

    /// Tokens per row of text data: each row is a window of N tokens, its targets the N
    /// tokens one step later [default: 64]
    #[arg(long, value_name = "N")]
    pub context: Option<usize>,

    /// Test rows from another source (e.g. csv:test.csv) instead of --test-split
    #[arg(long, value_name = "SOURCE")]
    pub test_data: Option<DataSource>,

    /// What separates the fields of CSV data (--data and --test-data): a character such
    /// as , or ; or |, tab, space, or 0xNN for any byte; a field in double quotes may
    /// hold it, and line breaks [default: ,]
    #[arg(long, value_name = "CHAR", value_parser = parse_delimiter)]
    pub delimiter: Option<u8>,

    /// Feature scaling, fitted on the training rows: a number to divide by (255 for
    /// pixels), standardize, minmax or none [default: 255 for IDX, standardize otherwise]
    #[arg(long, value_name = "HOW")]
    pub scale: Option<Scale>,

    /// Fraction of the training rows (the last ones) used for validation [default: 0 for
    /// sources with their own test set (mnist, fashion, --test-data), 0.1 otherwise]
    #[arg(long, value_name = "FRACTION")]
    pub validation_split: Option<f32>,

    /// Fraction of the rows held out for testing, for sources without their own test set
    /// (digits, CSV) [default: 0.2]
    #[arg(long, value_name = "FRACTION")]
    pub test_split: Option<f32>,
}

/// The data as the options prepare it: loaded, split and scaled.
pub struct Prepared {
    /// The source of the training rows.
    pub source: DataSource,
    /// The source of separate test rows, if any.
    pub test_source: Option<DataSource>,
    /// Whether the test rows come from the source (not from --test-split).
    pub own_test: bool,
    /// Fraction of rows held out for testing.
    pub test_split: f32,
    /// Fraction of training rows that validate.
    pub validation_split: f32,
    /// CSV field separator.
    pub delimiter: u8,
    /// The scaling chosen, and as fitted on the training rows.
    pub scale: Scale,
    /// See `scale`.
    pub scaler: Option<Scaler>,
    /// The training rows, scaled (validation rows last).
    pub train: Dataset,
    /// The test rows, scaled.
    pub test: Option<Dataset>,
    /// The vocabulary of text data.
    pub vocab: Option<Vocab>,
}

impl DataArgs {
    /// Loads, splits (seeded by `seed`) and scales the data.
    pub fn prepare(&self, seed: u64) -> Result<Prepared> {
        let source = self.data.clone().unwrap_or(DataSource::Digits);
        let own_test = source.has_test_set() || self.test_data.is_some();
        let (test_split, validation_split) = self.splits(&source, own_test)?;
        let delimiter = delimiter(
            self.delimiter,
            None,
            &[Some(&source), self.test_data.as_ref()],
        )?;
        let (split, vocab) = self.load(&source, test_split, seed, delimiter)?;
        let (mut train, mut test) = (split.train, split.test);
        let scale = self.scale.unwrap_or(source.default_scale());
        let scaler = scale.fit(&train)?;
        apply(scaler.as_ref(), &mut train)?;
        if let Some(t) = test.as_mut() {
            apply(scaler.as_ref(), t)?;
        }
        Ok(Prepared {
            source,
            test_source: self.test_data.clone(),
            own_test,
            test_split,
            validation_split,
            delimiter,
            scale,
            scaler,
            train,
            test,
            vocab,
        })
    }

    /// The rows of `source` split as asked, and the vocabulary of text data.
    fn load(
        &self,
        source: &DataSource,
        test_split: f32,
        seed: u64,
        delimiter: u8,
    ) -> Result<(Split, Option<Vocab>)> {
        if !source.is_text() {
            if self.context.is_some() {
                return Err(bad_arg(
                    "--context",
                    "applies to text data (text:FILE) only",
                ));
            }
            let split = source.load(self.test_data.as_ref(), test_split, seed, delimiter)?;
            return Ok((split, None));
        }
        if self.test_data.is_some() {
            return Err(bad_arg(
                "--test-data",
                "text data holds out its own last 10% as test rows",
            ));
        }
        let (split, vocab) = source.load_text(self.context.unwrap_or(DEFAULT_CONTEXT), None)?;
        Ok((split, Some(vocab)))
    }

    /// The test and validation fractions: none by default for a source with its own test
    /// rows (which trains on all the others, as Keras does), else the defaults.
    fn splits(&self, source: &DataSource, own_test: bool) -> Result<(f32, f32)> {
        if own_test && self.test_split.is_some() {
            return Err(bad_arg(
                "--test-split",
                format!(
                    "{source} comes with its test rows; --test-split applies to sources without"
                ),
            ));
        }
        let test_split = self
            .test_split
            .unwrap_or(if own_test { 0.0 } else { DEFAULT_TEST_SPLIT });
        let validation_split =
            self.validation_split
                .unwrap_or(if own_test { 0.0 } else { DEFAULT_VALIDATION });
        check_fraction("--validation-split", validation_split)?;
        Ok((test_split, validation_split))
    }
}

impl Prepared {
    /// Rows per step when none is given.
    pub fn default_batch(&self) -> usize {
        if self.own_test {
            DEFAULT_IMAGE_BATCH
        } else {
            DEFAULT_BATCH
        }
    }

    /// A run record of how this data was prepared (the training options left at their
    /// defaults, for the caller to fill in).
    pub fn record(&self, seed: u64) -> RunRecord {
        let mut record = RunRecord {
            data: self.source.to_string(),
            test_data: self.test_source.as_ref().map(|s| s.to_string()),
            delimiter: Some(self.delimiter).filter(|&d| d != b','),
            test_split: self.test_split,
            validation_split: self.validation_split,
            seed,
            scale: self.scale.to_string(),
            features: self.train.features,
            classes: self.train.classes,
            ..RunRecord::default()
        };
        record.set_scaler(self.scaler.as_ref());
        record
    }
}

/// Where the rows come from.
#[derive(Clone, Debug, PartialEq)]
pub enum DataSource {
    /// The 8x8 digits set built into kiln.
    Digits,
    /// A folder of MNIST-style IDX files (`train-*` and `t10k-*`); `kind` is how it was named.
    Idx {
        /// "mnist" or "fashion" (one loader, two names).
        kind: &'static str,
        /// The folder.
        dir: PathBuf,
    },
    /// A numeric CSV file with a header row.
    Csv {
        /// The file.
        path: PathBuf,
        /// The label column (default: the last one).
        label: Option<String>,
    },
    /// A text file (gzipped when it ends in .gz) for a language model: windows of
    /// `--context` tokens, each position's target the next token; the last 10% held out.
    Text {
        /// The file.
        path: PathBuf,
        /// Byte tokens (all 256) instead of the sorted characters of the file.
        bytes: bool,
    },
}

const SOURCE_FORMS: &str =
    "digits, mnist:DIR, fashion:DIR, csv:FILE[:LABEL_COLUMN] or text:FILE[:bytes]";

impl FromStr for DataSource {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        if s == "digits" {
            return Ok(DataSource::Digits);
        }
        let Some((kind, rest)) = s.split_once(':') else {
            return Err(format!("'{s}' is not one of {SOURCE_FORMS}"));
        };
        if rest.is_empty() {
            return Err(format!("'{s}' names no path after '{kind}:'"));
        }
        match kind {
            "mnist" | "fashion" => Ok(DataSource::Idx {
                kind: if kind == "mnist" { "mnist" } else { "fashion" },
                dir: PathBuf::from(rest),
            }),
            "csv" => {
                // A path may itself hold ':', so take the label only when the whole is no file.
                let (path, label) = match rest.rsplit_once(':') {
                    Some((p, l)) if !Path::new(rest).exists() && !p.is_empty() && !l.is_empty() => {
                        (p, Some(l.to_string()))
                    }
                    _ => (rest, None),
                };
                Ok(DataSource::Csv {
                    path: PathBuf::from(path),
                    label,
                })
            }
            "text" => {
                let bytes = rest
                    .strip_suffix(":bytes")
                    .filter(|p| !Path::new(rest).exists() && !p.is_empty());
                Ok(DataSource::Text {
                    path: PathBuf::from(bytes.unwrap_or(rest)),
                    bytes: bytes.is_some(),
                })
            }
            _ => Err(format!("unknown data kind '{kind}': use {SOURCE_FORMS}")),
        }
    }
}

impl fmt::Display for DataSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DataSource::Digits => write!(f, "digits"),
            DataSource::Idx { kind, dir } => write!(f, "{kind}:{}", dir.display()),
            DataSource::Csv { path, label: None } => write!(f, "csv:{}", path.display()),
            DataSource::Csv {
                path,
                label: Some(l),
            } => write!(f, "csv:{}:{l}", path.display()),
            DataSource::Text { path, bytes } => {
                let suffix = if *bytes { ":bytes" } else { "" };
                write!(f, "text:{}{suffix}", path.display())
            }
        }
    }
}

impl DataSource {
    /// True when the source ships its own test set, so no rows need holding out.
    pub fn has_test_set(&self) -> bool {
        matches!(self, DataSource::Idx { .. } | DataSource::Text { .. })
    }

    /// True for a text file, whose rows are windows of token ids.
    pub fn is_text(&self) -> bool {
        matches!(self, DataSource::Text { .. })
    }

    /// A text source's windows of `context` tokens: the first 90% of the text to train
    /// on, the last 10% held out as its test rows. `vocab` (a run's saved vocabulary)
    /// encodes the text when given; a character outside it is an error.
    pub fn load_text(&self, context: usize, vocab: Option<Vocab>) -> Result<(Split, Vocab)> {
        let DataSource::Text { path, bytes } = self else {
            return Err(bad_arg(
                "--context",
                "applies to text data (text:FILE) only",
            ));
        };
        let vocab = match (vocab, bytes) {
            (Some(v), _) => Some(v),
            (None, true) => Some(Vocab::bytes()),
            (None, false) => None,
        };
        let text::TextData {
            vocab,
            train,
            valid,
        } = text::load(path, vocab, context, context)?;
        let classes = vocab.len();
        let rows = |w: text::Windows| Dataset {
            x: w.x,
            y: w.y,
            n: w.n,
            features: w.context,
            classes,
            image: None,
        };
        let split = Split {
            train: rows(train),
            test: Some(rows(valid)),
        };
        Ok((split, vocab))
    }

    /// True for a CSV file, the one kind that `--delimiter` applies to.
    pub fn is_csv(&self) -> bool {
        matches!(self, DataSource::Csv { .. })
    }

    /// The scaling used when `--scale` is not given: pixels / 255, tables standardized.
    pub fn default_scale(&self) -> Scale {
        match self {
            DataSource::Idx { .. } => Scale::Divide(255.0),
            DataSource::Digits | DataSource::Csv { .. } => Scale::Standardize,
            // Token ids are not magnitudes.
            DataSource::Text { .. } => Scale::None,
        }
    }

    /// Loads the training rows and, when the source has them, its own test rows;
    /// `classes` forces a CSV to be read as classification or regression, and
    /// `delimiter` separates its fields.
    fn load_parts(
        &self,
        classes: Option<bool>,
        delimiter: u8,
    ) -> Result<(Dataset, Option<Dataset>)> {
        match self {
            DataSource::Digits => Ok((data::digits()?, None)),
            DataSource::Idx { dir, .. } => {
                let (train, test) = data::idx::load_mnist(dir)?;
                Ok((train, Some(test)))
            }
            DataSource::Text { .. } => Err(bad_arg(
                "--data",
                format!("{self} is text: its rows are windows of --context tokens"),
            )),
            DataSource::Csv { path, label } => {
                let options = data::csv::Options::new(label.as_deref(), classes);
                Ok((
                    data::csv::load_with(path, &options.delimiter(delimiter))?,
                    None,
                ))
            }
        }
    }

    /// Train and test sets: every row of `test_source` when given, else the source's
    /// own test set, else `test_split` of the rows held out by a shuffle seeded with
    /// `seed` (the same rows every time). `delimiter` separates the fields of CSV files.
    pub fn load(
        &self,
        test_source: Option<&DataSource>,
        test_split: f32,
        seed: u64,
        delimiter: u8,
    ) -> Result<Split> {
        check_fraction("--test-split", test_split)?;
        let (mut all, own_test) = self.load_parts(None, delimiter)?;
        let (train, test) = match (test_source, own_test) {
            (Some(source), _) => {
                // Read as the training rows were, even if the test file lacks some class.
                let mut test = source.load_parts(Some(all.classes > 0), delimiter)?.0;
                if all.classes > 0 {
                    all.classes = all.classes.max(test.classes);
                    test.classes = all.classes;
                }
                (all, Some(test))
            }
            (None, Some(test)) => (all, Some(test)),
            (None, None) if test_split > 0.0 => {
                let (train, test) = all.split(test_split, seed)?;
                (train, Some(test))
            }
            (None, None) => (all, None),
        };
        if train.n == 0 {
            return Err(bad_arg(
                "--test-split",
                format!("{test_split} leaves no training rows"),
            ));
        }
        train.validate()?;
        if let Some(t) = &test {
            if t.n > 0 {
                t.validate()?;
            }
        }
        Ok(Split { train, test })
    }
}

/// A training set and its test set.
pub struct Split {
    /// Rows to train on (validation rows are taken from its end).
    pub train: Dataset,
    /// Rows to test on after training, if any.
    pub test: Option<Dataset>,
}

/// Reads `--delimiter`: a character such as `,` `;` `|`, `tab` (or `\t`), `space`, or
/// `0xNN` for any byte.
pub fn parse_delimiter(s: &str) -> std::result::Result<u8, String> {
    data::csv::parse_delimiter(s).map_err(|e| match e {
        kiln::Error::InvalidArgument { detail, .. } => detail,
        e => e.to_string(),
    })
}

/// The `--delimiter` to read with: the one given, else the run's, else a comma; one
/// given must have a CSV source to apply to (`sources` are those read).
pub fn delimiter(
    given: Option<u8>,
    recorded: Option<u8>,
    sources: &[Option<&DataSource>],
) -> Result<u8> {
    if given.is_some() && !sources.iter().flatten().any(|s| s.is_csv()) {
        return Err(bad_arg(
            "--delimiter",
            "applies to CSV data (csv:FILE), and no source given is one",
        ));
    }
    Ok(given.or(recorded).unwrap_or(b','))
}

/// Checks that a fraction of rows is in [0, 1).
pub fn check_fraction(flag: &str, f: f32) -> Result<()> {
    if (0.0..1.0).contains(&f) {
        Ok(())
    } else {
        Err(bad_arg(flag, format!("{f} is not a fraction in [0, 1)")))
    }
}

/// How features are scaled before training (`--scale`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Scale {
    /// Divide by a number (255 for 8-bit pixels).
    Divide(f32),
    /// Zero mean and unit variance per feature.
    Standardize,
    /// Each feature's range onto [0, 1].
    MinMax,
    /// Leave the values as they are.
    None,
}

impl FromStr for Scale {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "standardize" => Ok(Scale::Standardize),
            "minmax" => Ok(Scale::MinMax),
            "none" => Ok(Scale::None),
            _ => match s.parse::<f32>() {
                Ok(d) if d.is_finite() && d > 0.0 => Ok(Scale::Divide(d)),
                _ => Err(format!(
                    "'{s}' is not standardize, minmax, none or a positive number to divide by"
                )),
            },
        }
    }
}

impl fmt::Display for Scale {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Scale::Divide(d) => write!(f, "{d}"),
            Scale::Standardize => write!(f, "standardize"),
            Scale::MinMax => write!(f, "minmax"),
            Scale::None => write!(f, "none"),
        }
    }
}

impl Scale {
    /// Fits the scaling on `train`; `None` leaves values unchanged.
    pub fn fit(self, train: &Dataset) -> Result<Option<Scaler>> {
        let how = match self {
            Scale::Divide(d) => Scaling::Divide(d),
            Scale::Standardize => Scaling::Standardize,
            Scale::MinMax => Scaling::MinMax,
            Scale::None => return Ok(None),
        };
        Scaler::fit(train, how).map(Some)
    }
}

/// Applies a fitted scaler, if any, to a set.
pub fn apply(scaler: Option<&Scaler>, data: &mut Dataset) -> Result<()> {
    match scaler {
        Some(s) => s.apply(data),
        None => Ok(()),
    }
}

/// One line about a set for the user: rows, features and classes.
pub fn describe(data: &Dataset) -> String {
    let kind = if data.classes > 0 {
        format!("{} classes", data.classes)
    } else {
        "regression".to_string()
    };
    format!("{} rows, {} features, {kind}", data.n, data.features)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_parse_and_print_back() {
        for s in [
            "digits",
            "mnist:/d",
            "fashion:d/x",
            "csv:a.csv",
            "csv:a.csv:y",
            "text:a.txt",
            "text:a.txt:bytes",
        ] {
            let parsed: DataSource = s.parse().unwrap();
            assert_eq!(parsed.to_string(), s);
        }
        assert!("mnist:".parse::<DataSource>().is_err());
        assert!("parquet:x".parse::<DataSource>().is_err());
        assert!("nothing".parse::<DataSource>().is_err());
    }

    #[test]
    fn delimiters_parse_and_apply_to_csv_only() {
        assert_eq!(parse_delimiter(";"), Ok(b';'));
        assert_eq!(parse_delimiter("tab"), Ok(b'\t'));
        assert!(parse_delimiter("\"").unwrap_err().contains("quotes"));
        assert!(parse_delimiter(",,").unwrap_err().contains("not one byte"));
        let csv: DataSource = "csv:a.csv".parse().unwrap();
        let digits = DataSource::Digits;
        assert_eq!(delimiter(None, None, &[Some(&digits)]).unwrap(), b',');
        assert_eq!(delimiter(None, Some(b';'), &[Some(&csv)]).unwrap(), b';');
        assert_eq!(
            delimiter(Some(b'|'), Some(b';'), &[Some(&digits), Some(&csv)]).unwrap(),
            b'|'
        );
        assert!(delimiter(Some(b';'), None, &[Some(&digits), None]).is_err());
    }

    #[test]
    fn scales_parse() {
        assert_eq!("255".parse::<Scale>().unwrap(), Scale::Divide(255.0));
        assert_eq!("minmax".parse::<Scale>().unwrap(), Scale::MinMax);
        assert!("0".parse::<Scale>().is_err());
        assert!("log".parse::<Scale>().is_err());
    }
}
