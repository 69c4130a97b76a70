//! Ensembles: several trained classifiers with the same inputs and classes, combined by
//! averaging their class probabilities or by a majority vote of their classes.

use super::Trainer;
use crate::data::Scaler;
use crate::error::{Error, Result};
use crate::ops::loss::Loss;

/// How an ensemble turns its members' outputs into one class per row.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Combine {
    /// The argmax of the members' averaged probabilities (the first of equal maxima).
    #[default]
    Mean,
    /// The class most members predict; a tie goes to the tied class with the highest
    /// averaged probability, and then to the lowest class id.
    Vote,
}

/// One trained model of an ensemble, with the scaling its inputs need.
pub struct Member {
    /// What names the member in errors and reports (a run folder, say).
    pub name: String,
    /// The trained classifier.
    pub trainer: Trainer,
    /// Applied to a copy of the raw input before this member sees it; `None` feeds it
    /// the input as given.
    pub scaler: Option<Scaler>,
}

impl Member {
    /// A member fed the input unchanged.
    pub fn new(name: impl Into<String>, trainer: Trainer) -> Member {
        Member {
            name: name.into(),
            trainer,
            scaler: None,
        }
    }

    /// The same member, scaling its input with `scaler` first.
    pub fn with_scaler(self, scaler: Option<Scaler>) -> Member {
        Member { scaler, ..self }
    }

    /// Classes the member tells apart: one sigmoid output stands for two.
    fn classes(&self) -> usize {
        self.trainer.model.output_width().max(2)
    }
}

/// Several classifiers with the same input width and classes, predicting together.
pub struct Ensemble {
    members: Vec<Member>,
    classes: usize,
}

/// The ensemble's loss and accuracy, and each member's accuracy.
#[derive(Clone, Debug)]
pub struct EnsembleEvaluation {
    /// Mean cross-entropy of the averaged probabilities.
    pub loss: f64,
    /// Accuracy of the combined classes.
    pub accuracy: f64,
    /// Each member's name and accuracy on its own.
    pub members: Vec<(String, f64)>,
}

impl Ensemble {
    /// Checks that the members are classifiers with one output, the same input width and
    /// the same classes.
    pub fn new(members: Vec<Member>) -> Result<Ensemble> {
        let first = members
            .first()
            .ok_or_else(|| Error::Ensemble("it has no members: give it at least one".into()))?;
        for m in &members {
            check_classifier(m)?;
            let (a, b) = (&first.trainer.model, &m.trainer.model);
            if a.input_width() != b.input_width() {
                return Err(mismatch(first, m, "input widths", |t| {
                    t.model.input_width()
                }));
            }
            if first.classes() != m.classes() {
                return Err(mismatch(first, m, "numbers of classes", |t| {
                    t.model.output_width().max(2)
                }));
            }
        }
        let classes = first.classes();
        Ok(Ensemble { members, classes })
    }

    /// The members, in the order given.
    pub fn members(&self) -> &[Member] {
        &self.members
    }

    /// Classes every member tells apart.
    pub fn classes(&self) -> usize {
        self.classes
    }

    /// Features per row of raw input.
    pub fn input_width(&self) -> usize {
        self.members
            .first()
            .map_or(0, |m| m.trainer.model.input_width())
    }

    /// Each member's class probabilities for rows `x` (row-major, `classes` per row).
    pub fn member_probabilities(&mut self, x: &[f32], batch_size: usize) -> Result<Vec<Vec<f32>>> {
        self.members
            .iter_mut()
            .map(|m| member_proba(m, x, batch_size))
            .collect()
    }

    /// The members' class probabilities averaged, `classes` per row.
    pub fn predict_proba(&mut self, x: &[f32], batch_size: usize) -> Result<Vec<f32>> {
        let all = self.member_probabilities(x, batch_size)?;
        Ok(mean_of(&all))
    }

    /// One class per row, combined as `combine` says.
    pub fn predict_classes(
        &mut self,
        x: &[f32],
        batch_size: usize,
        combine: Combine,
    ) -> Result<Vec<usize>> {
        let all = self.member_probabilities(x, batch_size)?;
        Ok(combined(&all, self.classes, combine))
    }

    /// Loss and accuracy of the ensemble on rows `x` with class ids `y`, and each
    /// member's accuracy.
    pub fn evaluate(
        &mut self,
        x: &[f32],
        y: &[f32],
        batch_size: usize,
        combine: Combine,
    ) -> Result<EnsembleEvaluation> {
        let all = self.member_probabilities(x, batch_size)?;
        let k = self.classes;
        let rows = all.first().map_or(0, |p| p.len() / k);
        if y.len() != rows {
            return Err(Error::Shape {
                op: "Ensemble::evaluate".into(),
                detail: format!("{rows} rows of x but {} labels", y.len()),
            });
        }
        let members = self
            .members
            .iter()
            .zip(&all)
            .map(|(m, p)| (m.name.clone(), accuracy(&argmax_rows(p, k), y)))
            .collect();
        let mean = mean_of(&all);
        Ok(EnsembleEvaluation {
            loss: cross_entropy(&mean, y, k),
            accuracy: accuracy(&combined(&all, k, combine), y),
            members,
        })
    }
}

/// Refuses regression models and models with several outputs.
fn check_classifier(m: &Member) -> Result<()> {
    if m.trainer.output_losses().is_some() {
        return Err(Error::Ensemble(format!(
            "{} has several outputs; an ensemble combines one-output classifiers",
            m.name
        )));
    }
    if matches!(m.trainer.loss(), Loss::Mse | Loss::Mae) {
        return Err(Error::Ensemble(format!(
            "{} is a regression model; only classifiers are supported (average regression \
             models' predict outputs yourself)",
            m.name
        )));
    }
    Ok(())
}

/// An error naming two members whose `what` (read by `of`) differ.
fn mismatch(a: &Member, b: &Member, what: &str, of: impl Fn(&Trainer) -> usize) -> Error {
    Error::Ensemble(format!(
        "members have different {what}: {} has {}, {} has {}",
        a.name,
        of(&a.trainer),
        b.name,
        of(&b.trainer)
    ))
}

/// A member's class probabilities for raw rows `x`, scaled as the member needs.
fn member_proba(m: &mut Member, x: &[f32], batch_size: usize) -> Result<Vec<f32>> {
    let out = match &m.scaler {
        Some(s) => {
            let mut scaled = x.to_vec();
            s.transform(&mut scaled)?;
            m.trainer.predict(&scaled, batch_size)?
        }
        None => m.trainer.predict(x, batch_size)?,
    };
    if m.trainer.model.output_width() == 1 {
        // One sigmoid output is the probability of class 1.
        return Ok(out.iter().flat_map(|&p| [1.0 - p, p]).collect());
    }
    Ok(out)
}

/// The elementwise mean of equally long vectors.
fn mean_of(all: &[Vec<f32>]) -> Vec<f32> {
    let n = all.len().max(1) as f64;
    let len = all.first().map_or(0, Vec::len);
    (0..len)
        .map(|i| (all.iter().map(|p| f64::from(p[i])).sum::<f64>() / n) as f32)
        .collect()
}

/// One class per row from every member's probabilities.
fn combined(all: &[Vec<f32>], classes: usize, combine: Combine) -> Vec<usize> {
    let mean = mean_of(all);
    match combine {
        Combine::Mean => argmax_rows(&mean, classes),
        Combine::Vote => {
            let votes: Vec<Vec<usize>> = all.iter().map(|p| argmax_rows(p, classes)).collect();
            vote(&votes, &mean, classes)
        }
    }
}

/// The majority class of each row from every member's classes (`member_classes[m][row]`),
/// a tie going to the tied class with the highest `mean_probs` and then the lowest id.
pub fn vote(member_classes: &[Vec<usize>], mean_probs: &[f32], classes: usize) -> Vec<usize> {
    let rows = mean_probs.len() / classes.max(1);
    (0..rows)
        .map(|r| {
            let mut counts = vec![0usize; classes];
            for c in member_classes.iter().filter_map(|m| m.get(r)) {
                if let Some(n) = counts.get_mut(*c) {
                    *n += 1;
                }
            }
            let probs = &mean_probs[r * classes..(r + 1) * classes];
            (0..classes).fold(0, |b, c| {
                let better = (counts[c], probs[c]) > (counts[b], probs[b]);
                if better {
                    c
                } else {
                    b
                }
            })
        })
        .collect()
}

/// The first of equal maxima of each row.
fn argmax_rows(p: &[f32], classes: usize) -> Vec<usize> {
    p.chunks_exact(classes.max(1))
        .map(|row| (0..row.len()).fold(0, |b, c| if row[c] > row[b] { c } else { b }))
        .collect()
}

/// The fraction of `pred` equal to the class ids `y`.
fn accuracy(pred: &[usize], y: &[f32]) -> f64 {
    let right = pred.iter().zip(y).filter(|(&p, &t)| p as f32 == t).count();
    right as f64 / y.len().max(1) as f64
}

/// Mean cross-entropy of probabilities `p` against class ids `y`, each probability
/// clamped away from 0 as the loss kernels do.
fn cross_entropy(p: &[f32], y: &[f32], classes: usize) -> f64 {
    let sum: f64 = p
        .chunks_exact(classes.max(1))
        .zip(y)
        .map(|(row, &t)| {
            let q = row.get(t as usize).copied().unwrap_or(0.0);
            -f64::from(q.max(1e-7)).ln()
        })
        .sum();
    sum / y.len().max(1) as f64
}
