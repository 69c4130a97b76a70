//! Hyperparameter search (Keras users know it as KerasTuner): which learning rate, batch
//! size, widths, depth, activation, optimizer, penalties and dropout train best.
//!
//! A [`Space`] says what varies, a [`Strategy`] picks the trials (grid, random, or
//! successive halving), and a [`Search`] trains them through a [`TrialRunner`] (a
//! [`FitRunner`] trains dense networks on a data set) within a trial and a time budget.
//! Every trial is a run folder `DIR/trials/NNN`; `DIR/trials.csv` lists them (rewritten
//! after each, so a rerun resumes), and `DIR/best` is a copy of the best completed one.
//! [`best_runs`] gives the run folders of the best N, for an ensemble.

mod results;
mod search;
mod space;
mod stacked;
mod strategy;
mod trial;

pub use results::{
    best_runs, trial_dir, Status, TrialRow, Trials, BEST_DIR, TRIALS_DIR, TRIALS_FILE,
};
pub use search::{Report, Search, TrialJob, TrialOutcome, TrialRunner};
pub use space::{Config, Domain, Hyper, Space, Value, ACTIVATIONS};
pub use strategy::{Rung, Strategy, DEFAULT_TRIALS};
pub use trial::{FitRunner, Hyperparams, StackHook, StartHook, TrialEpochHook};
