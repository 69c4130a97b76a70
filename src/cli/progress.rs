//! Training progress: a bar per epoch on a terminal, one line per epoch always.

use std::io::IsTerminal;
use std::time::Instant;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use kiln::train::{EpochLog, StepHook, StepInfo};

/// Bars are drawn only on a terminal: piped output and logs get the epoch lines alone.
pub fn bars_wanted(quiet: bool) -> bool {
    !quiet && std::io::stdout().is_terminal()
}

/// Read the loss back about ten times an epoch: each readback waits for the GPU.
pub fn loss_every(steps: usize) -> usize {
    (steps / 10).max(1)
}

/// A bar for one epoch of `steps` steps, hidden when bars are not wanted.
pub fn epoch_bar(show: bool, epoch: usize, epochs: usize, steps: usize) -> ProgressBar {
    if !show {
        return ProgressBar::hidden();
    }
    let width = epochs.to_string().len();
    let bar = ProgressBar::with_draw_target(Some(steps as u64), ProgressDrawTarget::stdout());
    let style = ProgressStyle::with_template(
        "epoch {prefix} [{bar:30}] {pos}/{len} steps  {msg}  ({elapsed}, eta {eta})",
    )
    .expect("the template is valid")
    .progress_chars("=> ");
    bar.set_style(style);
    bar.set_prefix(format!("{epoch:>width$}/{epochs}"));
    bar
}

/// The step hook feeding `bar`: position every step, loss when it was read back.
pub fn step_hook(bar: ProgressBar) -> StepHook {
    let start = Instant::now();
    let mut loss = None;
    Box::new(move |s: &StepInfo| {
        if s.loss.is_some() {
            loss = s.loss;
        }
        let rate = s.samples as f64 / start.elapsed().as_secs_f64().max(1e-9);
        let loss_text = loss.map_or("loss ...".to_string(), |l| format!("loss {l:.4}"));
        bar.set_message(format!("{loss_text}  {rate:.0} samples/s"));
        bar.set_position(s.step as u64);
    })
}

/// The one line printed for a finished epoch of `samples` training rows.
pub fn epoch_line(log: &EpochLog, epochs: usize, samples: usize) -> String {
    let width = epochs.to_string().len();
    let mut line = format!("epoch {:>width$}/{epochs}  loss {:.4}", log.epoch, log.loss);
    for (name, v) in &log.metrics {
        line += &format!("  {name} {v:.4}");
    }
    if let Some(v) = log.val_loss {
        line += &format!("  val_loss {v:.4}");
    }
    for (name, v) in &log.val_metrics {
        line += &format!("  val_{name} {v:.4}");
    }
    line += &format!(
        "  {:.2} s  {:.0} samples/s",
        log.seconds,
        log.samples_per_second(samples)
    );
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epoch_lines_name_every_value() {
        let log = EpochLog {
            epoch: 3,
            loss: 0.5,
            metrics: vec![("accuracy".into(), 0.75)],
            val_loss: Some(0.6),
            val_metrics: vec![("accuracy".into(), 0.7)],
            lr: 0.001,
            seconds: 2.0,
        };
        assert_eq!(
            epoch_line(&log, 10, 1000),
            "epoch  3/10  loss 0.5000  accuracy 0.7500  val_loss 0.6000  val_accuracy 0.7000  \
             2.00 s  500 samples/s"
        );
        assert_eq!(loss_every(5), 1);
        assert_eq!(loss_every(450), 45);
    }
}
