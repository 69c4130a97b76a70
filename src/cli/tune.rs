//! `kiln tune`: a hyperparameter search over `kiln train`'s data, each trial a run
//! folder that `eval`, `predict` and `export` take; the results as a table, trials.csv
//! and trials.png.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use clap::Args;
use kiln::tune::{
    self, FitRunner, Hyperparams, Search, Space, Strategy, TrialJob, TrialOutcome, TrialRunner,
    Trials,
};
use kiln::{Device, Result};

use super::data_source::DataArgs;
use super::model_args::{LossName, OptimizerName};
use super::{bad_arg, io_error, plot, progress};

/// The long help of `kiln tune`.
pub const LONG_ABOUT: &str = "\
Search hyperparameters: train a trial per configuration and rank them on validation.

Each --param names a hyperparameter and its values: a list (units=32,64,128,
optimizer=adam,sgd), a range LOW:HIGH (dropout=0:0.5) or a log range
log:LOW:HIGH (lr=log:1e-4:1e-1). Hyperparameters: lr, batch_size, units (of
every hidden layer), depth (hidden layers), activation, optimizer, l1, l2,
dropout. --space FILE gives them in a TOML file instead (lr = \"log:1e-4:1e-1\",
units = [32, 64]).

Every trial is a run folder OUT/trials/NNN; OUT/best is a copy of the best one,
for eval, predict and export. OUT/trials.csv lists the trials and is rewritten
after each, so running the same command again resumes the search.";

/// Examples for `kiln tune --help`.
pub const EXAMPLES: &str = "\
Examples:
  # Random search of 10 trials over the learning rate and width, on the digits set
  kiln tune --param lr=log:1e-4:1e-1 --param units=32,64,128 --trials 10 --out runs/tune

  # Every combination (ranges cut into 3 points), 5 epochs each
  kiln tune --strategy grid --param units=32,64 --param optimizer=adam,sgd --epochs 5

  # Successive halving: 27 trials, the best third trained 3 times longer each rung
  kiln tune --strategy halving --trials 27 --epochs 9 --space space.toml

  # At most 10 minutes; the same command later resumes where this one stopped
  kiln tune --data csv:iris.csv:species --param units=8,16,32 --time-budget 10m --out runs/iris

  # The best 5 trials as one ensemble
  kiln eval --ensemble best:5:runs/tune";

/// Options of `kiln tune`.
#[derive(Args, Debug)]
pub struct TuneArgs {
    #[command(flatten)]
    pub source: DataArgs,

    /// A hyperparameter and its values: NAME=A,B,C (choices), NAME=LOW:HIGH (a range) or
    /// NAME=log:LOW:HIGH (a log range); repeat for each
    #[arg(long = "param", value_name = "NAME=VALUES")]
    pub params: Vec<String>,

    /// A TOML file of hyperparameters, one key each, in --param's syntax or as a list
    /// (--param adds to it)
    #[arg(long, value_name = "FILE.toml")]
    pub space: Option<PathBuf>,

    /// How trials are chosen: grid (every combination), random (seeded draws) or halving
    /// (successive halving: many short trials, the best continued from their checkpoints)
    #[arg(long, value_name = "NAME", default_value = "random")]
    pub strategy: Strategy,

    /// At most this many trials [default: the whole grid; 9 for random and halving]
    #[arg(long, value_name = "N")]
    pub trials: Option<usize>,

    /// Start no epoch after this much time: 90s, 10m, 1h or seconds; a rerun continues
    #[arg(long, value_name = "TIME", value_parser = parse_duration)]
    pub time_budget: Option<Duration>,

    /// Epochs of a full trial (successive halving's last rung)
    #[arg(long, value_name = "N", default_value_t = 10)]
    pub epochs: usize,

    /// Points a grid cuts each range into
    #[arg(long, value_name = "N", default_value_t = 3)]
    pub grid_points: usize,

    /// Successive halving keeps the best 1/ETA of the trials at each rung and trains them
    /// ETA times longer
    #[arg(long, value_name = "ETA", default_value_t = 3)]
    pub eta: usize,

    /// Seed of the draws, the split, every trial's weights and shuffling
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub seed: u64,

    /// Loss [default: sparse_categorical_crossentropy for class labels, mse otherwise]
    #[arg(long, value_enum, value_name = "NAME")]
    pub loss: Option<LossName>,

    /// Rows per step of trials whose batch_size the search does not vary [default: 32;
    /// 128 for mnist/fashion]
    #[arg(long, value_name = "N")]
    pub batch_size: Option<usize>,

    /// Optimizer of trials whose optimizer the search does not vary [default: adam]
    #[arg(long, value_enum, value_name = "NAME")]
    pub optimizer: Option<OptimizerName>,

    /// Learning rate of trials whose lr the search does not vary [default: the optimizer's]
    #[arg(long, value_name = "RATE")]
    pub lr: Option<f32>,

    /// Where to train: gpu, gpu:NAME or cpu
    #[arg(long, value_name = "DEVICE", default_value = "gpu")]
    pub device: String,

    /// The search folder: trials.csv, trials.png, trials/NNN and best; rerunning the same
    /// command with it resumes the search
    #[arg(long, value_name = "DIR", default_value = "runs/tune")]
    pub out: PathBuf,

    /// Also write TensorBoard HParams summaries into DIR: the experiment, and a session
    /// per trial with its hyperparameters and final validation metrics
    #[arg(long, value_name = "DIR")]
    pub tensorboard: Option<PathBuf>,

    /// Train every trial alone: without it, fresh trials of one shape (widths,
    /// activations, batch size; no dropout or L1/L2) train stacked in the same dispatches
    #[arg(long)]
    pub no_stack: bool,

    /// One line per trial, no line per epoch
    #[arg(long, short)]
    pub quiet: bool,
}

/// Reads `90s`, `10m`, `1.5h` or a number of seconds.
pub fn parse_duration(s: &str) -> std::result::Result<Duration, String> {
    let s = s.trim();
    let (number, unit) = match s.find(|c: char| c.is_ascii_alphabetic()) {
        Some(i) => s.split_at(i),
        None => (s, "s"),
    };
    let scale = match unit {
        "s" => 1.0,
        "m" | "min" => 60.0,
        "h" => 3600.0,
        other => return Err(format!("unknown unit '{other}': use s, m or h")),
    };
    let x: f64 = number
        .trim()
        .parse()
        .map_err(|_| format!("'{s}' is not a time such as 90s, 10m or 1h"))?;
    if !(x.is_finite() && x >= 0.0) {
        return Err(format!("'{s}' is not a time"));
    }
    Ok(Duration::from_secs_f64(x * scale))
}

/// Runs `kiln tune`.
pub fn run(args: TuneArgs) -> Result<()> {
    let search = search_of(&args)?;
    search.check()?;
    let device = Device::from_name(&args.device)?;
    let mut source = args.source.clone();
    // Trials are ranked on validation rows: a source with its own test set has none by
    // default for `kiln train`, so the search holds out the usual tenth.
    let own_test =
        source.test_data.is_some() || source.data.as_ref().is_some_and(|d| d.has_test_set());
    if own_test && source.validation_split.is_none() {
        source.validation_split = Some(0.1);
    }
    let data = source.prepare(args.seed)?;
    if data.validation_split <= 0.0 {
        return Err(bad_arg(
            "--validation-split",
            "must be above 0: trials are ranked on the validation rows",
        ));
    }
    let loss_name = args.loss.unwrap_or(LossName::default_for(&data.train));
    let mut runner = FitRunner::new(&device, &data.train, loss_name.loss());
    runner.validation_split = data.validation_split;
    runner.seed = args.seed;
    runner.stack = !args.no_stack;
    runner.on_stack = Some(Box::new(|jobs: &[&TrialJob]| {
        let ids: Vec<String> = jobs.iter().map(|j| format!("{:03}", j.id)).collect();
        say!(
            "stack: trials {} train in the same dispatches",
            ids.join(", ")
        );
    }));
    runner.defaults = Hyperparams {
        lr: args.lr,
        batch_size: args.batch_size.unwrap_or(data.default_batch()),
        optimizer: args.optimizer.unwrap_or_default().name(),
        ..Hyperparams::default()
    };
    let base = data.record(args.seed);
    let (features, outputs) = (data.train.features, runner.outputs);
    runner.on_start = Some(Box::new(move |job: &TrialJob, hp: &Hyperparams| {
        let record = super::record::RunRecord {
            batch_size: hp.batch_size,
            epochs: job.horizon,
            layers: hp.widths(features, outputs),
            activation: hp.activation.clone(),
            loss: loss_name.name(),
            optimizer: hp.optimizer.clone(),
            lr: hp.learning_rate(),
            ..base.clone()
        };
        say!("trial {:03}: start {}", job.id, job.config);
        record.save(&job.dir)
    }));
    if !args.quiet {
        let rows = data.train.n - (data.train.n as f32 * data.validation_split).round() as usize;
        runner.on_epoch = Some(Box::new(
            move |job: &TrialJob, log: &kiln::train::EpochLog| {
                say!(
                    "  {:03} {}",
                    job.id,
                    progress::epoch_line(log, job.epochs, rows)
                );
            },
        ));
    }
    describe(&args, &search, &device);
    let started = Instant::now();
    let report = search.run(&mut Printing(runner))?;
    finish(&search.dir, &report, started.elapsed())
}

/// The search the options describe.
fn search_of(args: &TuneArgs) -> Result<Search> {
    let mut space = match &args.space {
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|e| io_error(path, e))?;
            Space::from_toml(&text, &path.display().to_string())?
        }
        None => Space::new(),
    };
    for p in &args.params {
        space.param(p)?;
    }
    let strategy = match args.strategy {
        Strategy::Grid { .. } => Strategy::Grid {
            points: args.grid_points.max(1),
        },
        Strategy::Random { .. } => Strategy::Random { seed: args.seed },
        Strategy::Halving { .. } => {
            if args.eta < 2 {
                return Err(bad_arg("--eta", "must be at least 2"));
            }
            Strategy::Halving {
                seed: args.seed,
                eta: args.eta,
            }
        }
    };
    let mut search = Search::new(space, strategy, args.epochs, &args.out);
    search.trials = args.trials;
    search.time_budget = args.time_budget;
    search.tensorboard = args.tensorboard.clone();
    Ok(search)
}

/// Prints what is about to happen, and what an earlier run of the search did.
fn describe(args: &TuneArgs, search: &Search, device: &Device) {
    let names: Vec<&str> = search.space.names().iter().map(|h| h.name()).collect();
    say!(
        "search: {} over {}, trials of {} epochs, {}",
        search.strategy.name(),
        names.join(", "),
        search.epochs,
        match (args.trials, args.time_budget) {
            (Some(n), Some(t)) => format!("at most {n} trials and {:.0} s", t.as_secs_f64()),
            (Some(n), None) => format!("at most {n} trials"),
            (None, Some(t)) => format!("at most {:.0} s", t.as_secs_f64()),
            (None, None) => "no budget".to_string(),
        }
    );
    say!("device: {}", device.name());
    if let Ok(Some(t)) = Trials::load(&search.dir) {
        say!(
            "resume: {} trials in {} from an earlier run",
            t.rows.len(),
            search.dir.display()
        );
    }
    say!("output: {}", search.dir.display());
}

/// A runner that prints a line as each trial finishes.
struct Printing<'a>(FitRunner<'a>);

impl TrialRunner for Printing<'_> {
    fn metric(&self) -> String {
        self.0.metric()
    }

    fn run_group(
        &mut self,
        jobs: &[TrialJob],
        done: &mut dyn FnMut(&TrialJob, Result<TrialOutcome>) -> Result<()>,
    ) -> Result<()> {
        let metric = self.0.metric();
        self.0.run_group(jobs, &mut |job, outcome| {
            match &outcome {
                Ok(o) => say!(
                    "trial {:03}: {} epochs, val_{metric} {}, val_loss {}, {:.1} s ({})",
                    job.id,
                    o.epochs,
                    number(o.metric),
                    number(o.loss),
                    o.seconds,
                    job.config
                ),
                Err(e) => say!("trial {:03}: failed: {e} ({})", job.id, job.config),
            }
            done(job, outcome)
        })
    }
}

/// A metric with four decimals, or a dash.
fn number(v: Option<f64>) -> String {
    v.map_or("-".into(), |x| format!("{x:.4}"))
}

/// Prints the table, best first, draws trials.png and says where the best is.
fn finish(dir: &Path, report: &tune::Report, elapsed: Duration) -> Result<()> {
    let t = &report.trials;
    let mut header = String::from("rank  trial");
    for h in &t.params {
        header += &format!("  {:>10}", h.name());
    }
    header += &format!(
        "  epochs  {:>12}  val_loss  seconds  status",
        format!("val_{}", t.metric)
    );
    say!("\n{header}");
    for (rank, r) in t.ranked().iter().enumerate() {
        let mut line = format!("{:>4}  {:>5}", rank + 1, format!("{:03}", r.id));
        for h in &t.params {
            let v = r.config.get(*h).map_or(String::new(), |v| v.to_string());
            line += &format!("  {v:>10}");
        }
        line += &format!(
            "  {:>6}  {:>12}  {:>8}  {:>7.1}  {}",
            r.epochs,
            number(r.metric),
            number(r.loss),
            r.seconds,
            r.status.name()
        );
        say!("{line}");
    }
    let png = dir.join("trials.png");
    if !t.rows.is_empty() {
        plot::trials(t, &png)?;
    }
    let epochs: usize = t.rows.iter().map(|r| r.epochs).sum();
    say!(
        "\nran:    {} trials this time, {} in all ({epochs} epochs), {:.1} s{}",
        report.ran.len(),
        t.rows.len(),
        elapsed.as_secs_f64(),
        if report.out_of_time {
            "; stopped by the time budget (run again to continue)"
        } else {
            ""
        }
    );
    match t.best(1).first() {
        Some(b) => say!(
            "best:   trial {:03} ({}), copied to {}",
            b.id,
            b.config,
            dir.join(tune::BEST_DIR).display()
        ),
        None => say!("best:   no trial completed yet"),
    }
    say!("saved:  trials.csv and trials.png in {}", dir.display());
    Ok(())
}
