//! `kiln train`: load and scale the data, build or resume a model, train it epoch by
//! epoch with a checkpoint after each, then test it and write the history and curves.

use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Args;
use kiln::data::text::Vocab;
use kiln::data::Dataset;
use kiln::dist::AllReduce;
use kiln::io::tensorboard::{self, HParam, SessionStatus, TensorBoard};
use kiln::train::{EpochLog, FitOptions, Validation};
use kiln::{Device, History, Result, Schedule, Trainer};

use super::data_source::{self, DataArgs, DataSource};
use super::distributed::{Job, Launcher};
use super::model_args::{self, LossName, ModelArgs, ModelSpec, OptimizerName, ScheduleName};
use super::record::{self, RunRecord};
use super::{bad_arg, io_error, plot, progress};

/// The long help of `kiln train`.
pub const LONG_ABOUT: &str = "\
Train a model and save its checkpoint, history and learning curves.

With no options, trains a small network on the built-in 8x8 digits set and tests
it on held-out rows. The data's features are scaled (pixels / 255 for IDX
files, standardized for CSV and digits), the last --validation-split of the
training rows is used for validation after every epoch, and the test rows are
evaluated at the end.

The --out folder receives the checkpoint (rewritten after every epoch, so an
interrupted run can be resumed), kiln-run.txt (how the data was prepared, used by
eval, predict and --resume), history.csv (one row per epoch) and curves.png.";

/// Examples for `kiln train --help`.
pub const EXAMPLES: &str = "\
Examples:
  # The built-in digits set, 10 epochs, written to runs/<date-time>
  kiln train

  # MNIST from a folder of IDX files (gzipped or not), two hidden layers
  kiln train --data mnist:data/mnist --layers 784,256,128,10 --epochs 5 --out runs/mnist

  # A CSV file whose 'species' column is the label, 30% of rows kept for testing
  kiln train --data csv:iris.csv:species --test-split 0.3 --layers 4,16,3

  # Regression on a CSV (labels that are not class ids), with SGD and momentum
  kiln train --data csv:houses.csv:price --loss mse --optimizer momentum --lr 0.01

  # A CSV whose fields are separated by semicolons (or tabs: --delimiter tab)
  kiln train --data csv:wine.csv:quality --delimiter ';' --loss mse

  # Finish an interrupted run (its checkpoint is saved after every epoch)
  kiln train --resume runs/mnist

  # Train an earlier run on, up to 30 epochs in all, on the CPU
  kiln train --resume runs/mnist --epochs 30 --device cpu

  # Data-parallel on 2 GPUs (or machines): each rank trains half of every batch
  mpirun -np 2 kiln train --data mnist:data/mnist --layers 784,256,128,10 --distributed mpi";

/// Options of `kiln train`.
#[derive(Args, Debug)]
pub struct TrainArgs {
    #[command(flatten)]
    pub source: DataArgs,

    #[command(flatten)]
    pub model: ModelArgs,

    /// Passes over the training rows, in all (with --resume: including the epochs already
    /// done) [default: 10; with --resume, the number the run was started with]
    #[arg(long, value_name = "N")]
    pub epochs: Option<usize>,

    /// Rows per optimizer step [default: 128 for mnist/fashion, 32 otherwise]
    #[arg(long, value_name = "N")]
    pub batch_size: Option<usize>,

    /// Training steps recorded into one GPU submission, as Keras's steps_per_execution:
    /// more steps spend less host time per step [default: 8]
    #[arg(long, value_name = "N")]
    pub steps_per_execution: Option<usize>,

    /// Optimizer [default: adam]
    #[arg(long, value_enum, value_name = "NAME")]
    pub optimizer: Option<OptimizerName>,

    /// Learning rate, the peak of a cosine schedule [default: 0.002 for adam, adamw and
    /// rmsprop under the cosine schedule, 0.001 under constant; 0.01 for the others]
    #[arg(long, value_name = "RATE")]
    pub lr: Option<f32>,

    /// Learning-rate schedule over the run's epochs [default: cosine, or the model file's]
    #[arg(long, value_enum, value_name = "NAME")]
    pub schedule: Option<ScheduleName>,

    /// Loss [default: sparse_categorical_crossentropy for class labels, mse otherwise]
    #[arg(long, value_enum, value_name = "NAME")]
    pub loss: Option<LossName>,

    /// Seed of the initial weights, the test split and the shuffling [default: 0]
    #[arg(long, value_name = "N")]
    pub seed: Option<u64>,

    /// Where to train: gpu (the best adapter), gpu:NAME (an adapter whose name contains
    /// NAME, see `kiln adapters`) or cpu (the reference backend)
    #[arg(long, value_name = "DEVICE", default_value = "gpu")]
    pub device: String,

    /// Folder for the checkpoint, history.csv and curves.png [default: runs/NAME, or
    /// runs/<date-time> without --name]
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,

    /// Name of the run: its folder is runs/NAME unless --out is given
    #[arg(long, value_name = "NAME", conflicts_with = "out")]
    pub name: Option<String>,

    /// Also write TensorBoard event files into DIR: every epoch's loss, metrics and
    /// learning rate, and the run's hyperparameters for the HParams dashboard
    #[arg(long, value_name = "DIR")]
    pub tensorboard: Option<PathBuf>,

    /// Continue the run saved in DIR (its data, model and optimizer) up to --epochs in all
    #[arg(
        long,
        value_name = "DIR",
        conflicts_with_all = [
            "data", "test_data", "delimiter", "context", "layers", "activation", "model", "batch_size", "optimizer",
            "lr", "schedule", "loss", "seed", "scale", "validation_split", "test_split", "out", "name"
        ]
    )]
    pub resume: Option<PathBuf>,

    /// No progress bars: one line per epoch (also the case when output is not a terminal)
    #[arg(long, short)]
    pub quiet: bool,

    /// Train as one rank of a data-parallel job started by a launcher: mpi (`mpirun -np
    /// N kiln train ... --distributed mpi`, kiln built with the `mpi` feature). Every rank
    /// trains its share of each --batch-size rows; rank 0 writes the run folder and prints
    #[arg(long, value_enum, value_name = "LAUNCHER")]
    pub distributed: Option<Launcher>,

    /// With --distributed: how long a rank waits for the others at each exchange before it
    /// fails the job (a rank that hangs); a rank that exits ends the job at once
    #[arg(
        long,
        value_name = "SECONDS",
        default_value_t = 300,
        requires = "distributed"
    )]
    pub rank_timeout: u64,

    /// With --distributed: all-reduce the gradients in buckets of this many MB (10^6
    /// bytes; fractions allowed), each as soon as the backward pass has computed it; 0
    /// exchanges them in one all-reduce after the backward pass [default: the gradients
    /// in 16 buckets of at least 0.256 MB]
    #[arg(long, value_name = "MB", requires = "distributed")]
    pub bucket_mb: Option<f64>,
}

/// Epochs when --epochs is not given: enough for the digits set to pass 95% accuracy.
const DEFAULT_EPOCHS: usize = 10;

/// Everything a run needs once its data and trainer are ready.
struct Run {
    /// Whether this process writes the run folder: always, except on ranks other than 0.
    lead: bool,
    out: PathBuf,
    record: RunRecord,
    train: Dataset,
    test: Option<Dataset>,
    trainer: Trainer,
    history: History,
}

/// Runs `kiln train`, alone or as one rank of a job.
pub fn run(args: TrainArgs) -> Result<()> {
    let Some(launcher) = args.distributed else {
        let device = Device::from_name(&args.device)?;
        return train(&args, &device, None);
    };
    let mut job = Job::join(launcher, Duration::from_secs(args.rank_timeout))?;
    let result = run_rank(&args, &mut job);
    if let Err(e) = &result {
        // The job's errors name their rank; another error says here which rank it hit.
        if !matches!(
            e,
            kiln::Error::Distributed { .. } | kiln::Error::RankMismatch { .. }
        ) {
            let (rank, size) = (job.group.rank(), job.group.size());
            whole_line(format!("rank {rank} of {size} stops the job:"));
        }
        job.abandon();
    }
    result
}

/// Writes `line` to stderr in one call, so that ranks sharing mpirun's stderr do not
/// interleave their lines (`eprintln!` writes each piece of its format separately).
fn whole_line(line: String) {
    use std::io::Write;
    let _ = std::io::stderr().write_all(format!("{line}\n").as_bytes());
}

/// Trains as one rank of `job`: on its own device, printing only on rank 0.
fn run_rank(args: &TrainArgs, job: &mut Job) -> Result<()> {
    let device = job.device(&args.device)?;
    let (rank, size) = (job.group.rank(), job.group.size());
    whole_line(format!("rank {rank} of {size} on {}", device.name()));
    if !job.leads() {
        super::silence();
    }
    train(args, &device, Some(job))
}

/// Loads or resumes the run, trains it and (on the leading rank) tests it.
fn train(args: &TrainArgs, device: &Device, job: Option<&mut Job>) -> Result<()> {
    let lead = job.as_ref().is_none_or(|j| j.leads());
    let mut run = match &args.resume {
        Some(dir) => resume(dir, device, lead)?,
        None => fresh(args, device, lead)?,
    };
    if args.epochs == Some(0) {
        return Err(bad_arg("--epochs", "must be at least 1"));
    }
    // A resumed run finishes what it was started for, unless told otherwise.
    let epochs = args.epochs.unwrap_or(run.record.epochs);
    if run.record.epochs != epochs {
        run.record.epochs = epochs;
        if lead {
            run.record.save(&run.out)?;
        }
    }
    // A cosine schedule ends at its last epoch; a run resumed for more epochs would then
    // train at rate 0, so the half period stretches to the new end.
    if let Schedule::Cosine { t_max, eta_min } = run.trainer.optimizer().schedule {
        if args.resume.is_some() && t_max < epochs {
            say!("schedule: cosine stretched from {t_max} to {epochs} epochs");
            run.trainer.set_schedule(Schedule::Cosine {
                t_max: epochs,
                eta_min,
            });
        }
    }
    describe(&run, device, epochs);
    let group = job.map(|j| &mut *j.group as &mut dyn AllReduce);
    fit(&mut run, epochs, args, group)?;
    if lead {
        finish(&mut run)?;
    }
    Ok(())
}

/// Loads the data and builds a new model as the options say; `lead`: creates the run
/// folder.
fn fresh(args: &TrainArgs, device: &Device, lead: bool) -> Result<Run> {
    // A model file's [training] section gives defaults that the options override.
    let file = args.model.load_file()?;
    let from_file = |f: fn(&ModelSpec) -> Option<usize>| file.as_ref().and_then(f);
    let seed = args
        .seed
        .or(file.as_ref().and_then(|f| f.seed))
        .unwrap_or(0);
    let data = args.source.prepare(seed)?;
    let batch_size = args
        .batch_size
        .or(from_file(|f| f.batch_size))
        .unwrap_or(data.default_batch());
    if batch_size == 0 {
        return Err(bad_arg("--batch-size", "must be at least 1"));
    }
    let base = data.record(seed);
    let text = data.source.is_text();
    let (train, test, vocab) = (data.train, data.test, data.vocab);
    let loss_name = args.loss.unwrap_or(LossName::default_for(&train));
    let outputs = match loss_name {
        LossName::SparseCategoricalCrossentropy => train.classes.max(1),
        _ => 1,
    };
    let epochs = args
        .epochs
        .or(from_file(|f| f.epochs))
        .unwrap_or(DEFAULT_EPOCHS);
    let spec = match file {
        Some(spec) => spec,
        None if text => args.model.text(train.features, train.classes)?,
        None => args.model.build(train.features, outputs)?,
    };
    let (optimizer_name, optimizer) = optimizer_of(args, spec.optimizer.clone(), epochs)?;
    let lr = optimizer.lr;
    let model = spec.architecture.build(device, seed)?;
    let (trainer, loss) = compile(args, &spec, model, optimizer, (&train, loss_name))?;

    let mut layers = vec![trainer.model.input_width()];
    layers.extend(spec.architecture.dense_units());
    let record = RunRecord {
        batch_size,
        epochs,
        layers,
        // A model file names its own activations, layer by layer.
        activation: if args.model.model.is_some() || args.model.gpt.is_some() {
            String::new()
        } else {
            args.model.activation.unwrap_or_default().name()
        },
        loss,
        optimizer: optimizer_name,
        lr,
        ..base
    };

    // Other ranks neither need the folder nor may race rank 0 to name and create it.
    let out = if lead { out_dir(args)? } else { PathBuf::new() };
    if lead {
        record.save(&out)?;
        if let Some(v) = &vocab {
            // Later commands encode text with the ids the model was trained on.
            v.save(&out.join(VOCAB_FILE))?;
        }
        // A checkpoint from the start, so the folder can be resumed or evaluated at once.
        kiln::io::save(&out, &trainer)?;
    }
    Ok(Run {
        lead,
        out,
        record,
        train,
        test,
        trainer,
        history: History::default(),
    })
}

/// The model compiled for the data (with `loss_name`, the data's default loss) and the
/// loss as the run record names it: each output's, for a model with several outputs.
fn compile(
    args: &TrainArgs,
    spec: &ModelSpec,
    model: kiln::Model,
    optimizer: kiln::Optimizer,
    (train, loss_name): (&Dataset, LossName),
) -> Result<(Trainer, String)> {
    let what = if args.model.model.is_some() {
        "--model"
    } else if args.model.gpt.is_some() {
        "--gpt"
    } else {
        "--layers"
    };
    if super::outputs::wanted(&model, &spec.training) {
        let flags = (args.loss, loss_name);
        let t = super::outputs::compile(model, &spec.training, flags, optimizer, train, what)?;
        let losses = super::outputs::describe(&t.output_losses().unwrap_or_default());
        return Ok((t, losses));
    }
    let loss = match (args.loss, spec.loss) {
        (Some(l), _) => l.loss(),
        (None, Some(l)) => model_args::for_class_ids(l),
        (None, None) => loss_name.loss(),
    };
    model_args::check_fits(&model, loss, train, what)?;
    let outputs = model.output_width();
    let trainer = model.compile(loss, optimizer, &model_args::train_metrics(loss, outputs))?;
    Ok((trainer, LossName::of(loss).name()))
}

/// The optimizer and its name: a model file's, with --lr and --schedule applied, unless
/// --optimizer names another; else --optimizer (Adam by default) with its default rate.
fn optimizer_of(
    args: &TrainArgs,
    from_file: Option<(String, kiln::Optimizer)>,
    epochs: usize,
) -> Result<(String, kiln::Optimizer)> {
    Ok(match (args.optimizer, from_file) {
        (None, Some((name, mut o))) => {
            if let Some(lr) = args.lr {
                o.lr = lr;
            }
            if let Some(s) = args.schedule {
                o.schedule = s.schedule(epochs);
            }
            (name, o)
        }
        (name, _) => {
            let name = name.unwrap_or_default();
            let schedule = args.schedule.unwrap_or_default();
            let lr = args.lr.unwrap_or(name.default_lr(schedule));
            let o = name.optimizer(lr)?.schedule(schedule.schedule(epochs));
            (name.name(), o)
        }
    })
}

/// Reloads a run folder: its record, data (scaled as before), trainer and history.
fn resume(dir: &Path, device: &Device, lead: bool) -> Result<Run> {
    let record = RunRecord::load(dir)?;
    let (mut train, mut test) = load_recorded(&record, Some(dir))?;
    let scaler = record.scaler();
    data_source::apply(scaler.as_ref(), &mut train)?;
    if let Some(t) = test.as_mut() {
        data_source::apply(scaler.as_ref(), t)?;
    }
    let trainer = kiln::io::load_trainer(dir, device)?;
    let path = dir.join("history.csv");
    let mut history = match std::fs::read_to_string(&path) {
        Ok(text) => record::parse_history(&text, &path.display().to_string())?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => History::default(),
        Err(e) => return Err(io_error(&path, e)),
    };
    // The history may have been written for an epoch whose checkpoint was not.
    history.epochs.retain(|e| e.epoch <= trainer.epochs_done());
    Ok(Run {
        lead,
        out: dir.to_path_buf(),
        record,
        train,
        test,
        trainer,
        history,
    })
}

/// The vocabulary a text run saved in its folder.
pub const VOCAB_FILE: &str = "vocab.json";

/// The vocabulary saved in run folder `dir`, if there is one.
pub fn saved_vocab(dir: Option<&Path>) -> Result<Option<Vocab>> {
    match dir.map(|d| d.join(VOCAB_FILE)) {
        Some(path) if path.is_file() => Vocab::load(&path).map(Some),
        _ => Ok(None),
    }
}

/// The train and test rows of a recorded run, split as it split them (not yet scaled);
/// text is encoded with the vocabulary saved in its folder `dir`.
pub fn load_recorded(record: &RunRecord, dir: Option<&Path>) -> Result<(Dataset, Option<Dataset>)> {
    let source: DataSource = record.data.parse().map_err(|e| bad_arg("data", e))?;
    if source.is_text() {
        // A text run's features are its context.
        let (split, _) = source.load_text(record.features, saved_vocab(dir)?)?;
        return Ok((split.train, split.test));
    }
    let test_source: Option<DataSource> = match &record.test_data {
        Some(t) => Some(t.parse().map_err(|e| bad_arg("test_data", e))?),
        None => None,
    };
    let split = source.load(
        test_source.as_ref(),
        record.test_split,
        record.seed,
        record.delimiter.unwrap_or(b','),
    )?;
    if split.train.features != record.features {
        return Err(bad_arg(
            "data",
            format!(
                "{} now has {} features per row, the run was trained on {}",
                record.data, split.train.features, record.features
            ),
        ));
    }
    Ok((split.train, split.test))
}

/// The output folder, created; refuses one that already holds a run.
fn out_dir(args: &TrainArgs) -> Result<PathBuf> {
    let dir = match (&args.out, &args.name) {
        (Some(d), _) => d.clone(),
        (None, Some(n)) => Path::new("runs").join(n),
        (None, None) => unique(Path::new("runs").join(timestamp())),
    };
    if dir.join(record::FILE).exists() {
        return Err(bad_arg(
            "--out",
            format!(
                "{} already holds a run; continue it with --resume {} or choose another folder",
                dir.display(),
                dir.display()
            ),
        ));
    }
    std::fs::create_dir_all(&dir).map_err(|e| io_error(&dir, e))?;
    Ok(dir)
}

/// `dir`, or `dir-2`, `dir-3`... when it exists (two runs started in the same second).
fn unique(dir: PathBuf) -> PathBuf {
    let mut candidate = dir.clone();
    let mut n = 2;
    while candidate.exists() {
        candidate = PathBuf::from(format!("{}-{n}", dir.display()));
        n += 1;
    }
    candidate
}

/// The current UTC time as YYYYMMDD-HHMMSS.
fn timestamp() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil_date(days as i64);
    format!(
        "{y:04}{m:02}{d:02}-{:02}{:02}{:02}",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

/// The proleptic Gregorian (year, month, day) of a day count since 1970-01-01.
fn civil_date(days: i64) -> (i64, u32, u32) {
    // Count in 400-year eras starting on March 1st, so leap days end a year.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// Rows of `data` that train (the rest of `validation_split` validates).
fn training_rows(data: &Dataset, validation_split: f32) -> usize {
    data.n - (data.n as f32 * validation_split).round() as usize
}

/// Prints what is about to happen.
fn describe(run: &Run, device: &Device, epochs: usize) {
    let r = &run.record;
    let fit_rows = training_rows(&run.train, r.validation_split);
    let test = run
        .test
        .as_ref()
        .map_or("no test rows".to_string(), |t| format!("{} test", t.n));
    let shape = if r.data.starts_with("text:") {
        format!(
            "{} tokens per row, {} in the vocabulary",
            r.features, r.classes
        )
    } else if r.classes > 0 {
        format!("{} features, {} classes", r.features, r.classes)
    } else {
        format!("{} features, regression", r.features)
    };
    say!(
        "data:   {} ({fit_rows} train, {} validation, {test}; {shape}; scale {})",
        r.data,
        run.train.n - fit_rows,
        r.scale
    );
    let widths: Vec<String> = r.layers.iter().map(|w| w.to_string()).collect();
    let hidden = match r.activation.as_str() {
        "" => String::new(),
        act => format!(", {act} hidden"),
    };
    say!(
        "model:  {} ({} parameters){hidden}, loss {}, {} lr {}{}, batch {}",
        widths.join("-"),
        run.trainer.model.param_count(),
        r.loss,
        r.optimizer,
        r.lr,
        schedule_text(&run.trainer.optimizer().schedule),
        r.batch_size
    );
    say!("device: {}", device.name());
    let done = run.trainer.epochs_done();
    if done > 0 {
        say!(
            "resume: {done} epochs done, {} to go (--epochs {epochs} in all)",
            epochs.saturating_sub(done)
        );
    }
    say!("output: {}", run.out.display());
}

/// How the model line names a schedule.
fn schedule_text(schedule: &Schedule) -> String {
    match schedule {
        Schedule::Constant => String::new(),
        Schedule::Cosine { t_max, .. } => format!(" (cosine over {t_max} epochs)"),
        other => format!(" ({other:?})"),
    }
}

/// Trains epoch by epoch up to `epochs` in all, saving the checkpoint and history after each
/// (as one rank of `group`, if given).
///
/// The data is uploaded once; the run hands the trainer back between epochs for the save.
/// The options of a fit of `epochs` more epochs of `steps` steps, from the run's record
/// and the command line.
fn fit_options(r: &RunRecord, args: &TrainArgs, epochs: usize, steps: usize) -> Result<FitOptions> {
    let mut opts = FitOptions::new(epochs, r.batch_size);
    opts.seed = r.seed;
    opts.loss_every = progress::loss_every(steps);
    if let Some(n) = args.steps_per_execution {
        opts.steps_per_execution = n;
    }
    if let Some(mb) = args.bucket_mb {
        if !(mb >= 0.0 && mb.is_finite()) {
            return Err(kiln::Error::InvalidArgument {
                name: "--bucket-mb".into(),
                detail: format!("{mb} is not a size in MB"),
            });
        }
        opts.bucket_bytes = Some((mb * 1e6).round() as usize);
    }
    if r.validation_split > 0.0 {
        opts.validation = Validation::Split(r.validation_split);
    }
    Ok(opts)
}

fn fit(
    run: &mut Run,
    epochs: usize,
    args: &TrainArgs,
    group: Option<&mut dyn AllReduce>,
) -> Result<()> {
    let r = &run.record;
    let rows = training_rows(&run.train, r.validation_split);
    let steps = rows.div_ceil(r.batch_size);
    let bars = progress::bars_wanted(args.quiet || !run.lead);
    let remaining = epochs.saturating_sub(run.trainer.epochs_done());
    if remaining == 0 {
        return Ok(());
    }
    let opts = fit_options(r, args, remaining, steps)?;
    let y = super::outputs::targets(&run.trainer, &run.train.y)?;
    let x = &run.train.x;
    let mut fit = match group {
        Some(g) => run.trainer.start_fit_distributed(g, x, &y, opts)?,
        None => run.trainer.start_fit(x, &y, opts)?,
    };
    let mut board = match &args.tensorboard {
        Some(dir) if run.lead => Some(start_board(dir, &run.record)?),
        _ => None,
    };
    let mut first = true;
    loop {
        let epoch = fit.trainer().epochs_done() + 1;
        let bar = progress::epoch_bar(bars, epoch, epochs, steps);
        fit.set_step_hook(Some(progress::step_hook(bar.clone())));
        let result = fit.next_epoch();
        bar.finish_and_clear();
        let log = match result {
            Ok(Some(log)) => log,
            Ok(None) => break,
            Err(e) => {
                if let Some(b) = board.as_mut() {
                    let _ = b.session_end(SessionStatus::Failure);
                }
                return Err(e);
            }
        };
        say!("{}", progress::epoch_line(&log, epochs, rows));
        if let Some(b) = board.as_mut() {
            log_board(b, &log, &run.record, first)?;
        }
        first = false;
        run.history.epochs.push(log);
        if !run.lead {
            continue;
        }
        kiln::io::save(&run.out, fit.trainer())?;
        let path = run.out.join("history.csv");
        std::fs::write(&path, run.history.to_csv()).map_err(|e| io_error(&path, e))?;
    }
    fit.finish()?;
    if let Some(b) = board.as_mut() {
        b.session_end(SessionStatus::Success)?;
    }
    Ok(())
}

/// The run's hyperparameters as the HParams dashboard shows them.
fn hparams_of(r: &RunRecord) -> Vec<(String, HParam)> {
    let layers: Vec<String> = r.layers.iter().map(|w| w.to_string()).collect();
    vec![
        ("lr".into(), HParam::Number(f64::from(r.lr))),
        ("batch_size".into(), HParam::Number(r.batch_size as f64)),
        ("optimizer".into(), HParam::Text(r.optimizer.clone())),
        ("layers".into(), HParam::Text(layers.join(","))),
        ("loss".into(), HParam::Text(r.loss.clone())),
        ("seed".into(), HParam::Number(r.seed as f64)),
    ]
}

/// Opens the event file and starts the run's HParams session.
fn start_board(dir: &Path, r: &RunRecord) -> Result<TensorBoard> {
    let mut board = TensorBoard::new(dir)?;
    board.session_start(&hparams_of(r))?;
    Ok(board)
}

/// Logs an epoch; the first also names the experiment's metrics, known only now.
fn log_board(board: &mut TensorBoard, log: &EpochLog, r: &RunRecord, first: bool) -> Result<()> {
    if first {
        let mut metrics = tensorboard::epoch_tags(log);
        metrics.retain(|tag| tag != "lr");
        board.experiment(&hparams_of(r), &metrics)?;
    }
    board.log_epoch(log)
}

/// Tests the model, prints the summary and writes the curves.
fn finish(run: &mut Run) -> Result<()> {
    if let Some(test) = run.test.as_ref().filter(|t| t.n > 0) {
        let y = super::outputs::targets(&run.trainer, &test.y)?;
        let e = run.trainer.evaluate(&test.x, &y, run.record.batch_size)?;
        let mut line = format!("test:   loss {:.4}", e.loss);
        for (name, v) in &e.metrics {
            line += &format!("  {name} {v:.4}");
        }
        say!("{line}  ({} rows)", test.n);
    }
    let seconds: Vec<f64> = run.history.epochs.iter().map(|e| e.seconds).collect();
    if !seconds.is_empty() {
        let total: f64 = seconds.iter().sum();
        let (min, max) = seconds
            .iter()
            .fold((f64::INFINITY, 0.0f64), |(a, b), &s| (a.min(s), b.max(s)));
        say!(
            "time:   {:.2} s per epoch (min {min:.2}, max {max:.2}), {total:.1} s in all",
            total / seconds.len() as f64
        );
        let x = run.trainer.exchange_stats();
        if x.steps > 0 {
            // What the cost model in the README needs: the all-reduce's share of a step.
            say!(
                "all-reduce: {:.2} ms and {:.2} MB per step, {:.1}% of the training time",
                x.seconds * 1e3 / x.steps as f64,
                x.bytes as f64 / 1e6 / x.steps as f64,
                100.0 * x.seconds / total.max(f64::MIN_POSITIVE)
            );
        }
    }
    let curves = run.out.join("curves.png");
    if !run.history.epochs.is_empty() {
        plot::curves(&run.history, &curves)?;
    }
    say!(
        "saved:  checkpoint, history.csv and curves.png in {}",
        run.out.display()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_are_gregorian() {
        assert_eq!(civil_date(0), (1970, 1, 1));
        assert_eq!(civil_date(11_016), (2000, 2, 29));
        assert_eq!(civil_date(19_782), (2024, 2, 29));
        assert_eq!(civil_date(20_453), (2025, 12, 31));
    }
}
