//! The `[training]` section: checked, and turned into a loss, an optimizer and metrics
//! (or written from them).

use super::schema::{
    parse_loss, rule_name, ScheduleSpec, TrainingSpec, LOSSES, METRICS, OPTIMIZERS, SCHEDULES,
};
use super::validation::{check, check_f32, invalid, join, path_text, Invalid, Seg};
use crate::error::{Error, Result};
use crate::optim::{Optimizer, Rule, Schedule};
use crate::train::{Loss, Metric};

/// Where each optimizer's keys apply.
fn applies(key: &str, optimizer: &str) -> bool {
    let sgd = matches!(optimizer, "sgd" | "momentum" | "nesterov");
    match key {
        "momentum" => sgd || optimizer == "rmsprop",
        "dampening" => sgd,
        "betas" => matches!(optimizer, "adam" | "adamw"),
        "eps" => !sgd,
        "amsgrad" => optimizer == "adam",
        "alpha" | "centered" => optimizer == "rmsprop",
        "lr_decay" | "initial_accumulator" => optimizer == "adagrad",
        _ => true,
    }
}

impl TrainingSpec {
    /// The section describing `opt`: every hyper-parameter written out, so it reads back exactly.
    pub fn from_optimizer(opt: &Optimizer) -> Result<TrainingSpec> {
        let mut t = TrainingSpec {
            optimizer: Some(rule_name(&opt.rule).into()),
            lr: Some(opt.lr),
            weight_decay: Some(opt.weight_decay),
            clip_norm: opt.clip_norm,
            schedule: match opt.schedule {
                Schedule::Constant => None,
                ref s => Some(ScheduleSpec::from_schedule(s)?),
            },
            ..TrainingSpec::default()
        };
        match opt.rule {
            Rule::Sgd {
                momentum,
                dampening,
                ..
            } => {
                t.momentum = (momentum != 0.0).then_some(momentum);
                t.dampening = (dampening != 0.0).then_some(dampening);
            }
            Rule::Adam {
                beta1,
                beta2,
                eps,
                amsgrad,
            } => {
                t.betas = Some([beta1, beta2]);
                t.eps = Some(eps);
                t.amsgrad = amsgrad.then_some(true);
            }
            Rule::AdamW { beta1, beta2, eps } => {
                t.betas = Some([beta1, beta2]);
                t.eps = Some(eps);
            }
            Rule::RmsProp {
                alpha,
                eps,
                momentum,
                centered,
            } => {
                t.alpha = Some(alpha);
                t.eps = Some(eps);
                t.momentum = (momentum != 0.0).then_some(momentum);
                t.centered = centered.then_some(true);
            }
            Rule::Adagrad {
                eps,
                lr_decay,
                initial_accumulator,
            } => {
                t.eps = Some(eps);
                t.lr_decay = (lr_decay != 0.0).then_some(lr_decay);
                t.initial_accumulator = (initial_accumulator != 0.0).then_some(initial_accumulator);
            }
        }
        Ok(t)
    }

    /// Checks every key; `Err` names the first bad one.
    pub(crate) fn validate(&self, at: &[Seg]) -> std::result::Result<(), Invalid> {
        let field = |name: &'static str| join(at, [Seg::Key(name)]);
        if let Some(name) = &self.loss {
            check(parse_loss(name, false).is_some(), &field("loss"), || {
                format!("unknown loss '{name}' (known: {LOSSES})")
            })?;
            check(
                self.from_logits.is_none() || name == "binary_crossentropy",
                &field("from_logits"),
                || "only binary_crossentropy takes from_logits".into(),
            )?;
        }
        let positive = |v: f32| v.is_finite() && v > 0.0;
        check_f32(self.lr, &field("lr"), positive, "a finite rate > 0")?;
        if let Some(name) = &self.optimizer {
            check(
                Optimizer::from_name(name, 0.1).is_some(),
                &field("optimizer"),
                || format!("unknown optimizer '{name}' (known: {OPTIMIZERS})"),
            )?;
            let set = [
                ("momentum", self.momentum.is_some()),
                ("dampening", self.dampening.is_some()),
                ("betas", self.betas.is_some()),
                ("eps", self.eps.is_some()),
                ("amsgrad", self.amsgrad.is_some()),
                ("alpha", self.alpha.is_some()),
                ("centered", self.centered.is_some()),
                ("lr_decay", self.lr_decay.is_some()),
                ("initial_accumulator", self.initial_accumulator.is_some()),
            ];
            if let Some((key, _)) = set.iter().find(|(k, s)| *s && !applies(k, name)) {
                return Err(invalid(
                    &field(key),
                    format!("does not apply to optimizer '{name}'"),
                ));
            }
            if name == "nesterov" {
                check(self.momentum != Some(0.0), &field("momentum"), || {
                    "nesterov needs momentum > 0".into()
                })?;
                check(
                    self.dampening.unwrap_or(0.0) == 0.0,
                    &field("dampening"),
                    || "nesterov needs dampening = 0".into(),
                )?;
            }
        }
        self.validate_values(at)
    }

    /// Checks the numbers, lists and the schedule.
    fn validate_values(&self, at: &[Seg]) -> std::result::Result<(), Invalid> {
        let field = |name: &'static str| join(at, [Seg::Key(name)]);
        let positive = |v: f32| v.is_finite() && v > 0.0;
        let non_negative = |v: f32| v.is_finite() && v >= 0.0;
        let fraction = |v: f32| (0.0..1.0).contains(&v);
        check_f32(self.momentum, &field("momentum"), fraction, "in [0, 1)")?;
        check_f32(
            self.dampening,
            &field("dampening"),
            |v| (0.0..=1.0).contains(&v),
            "in [0, 1]",
        )?;
        if let Some(betas) = self.betas {
            for (k, b) in betas.iter().enumerate() {
                check(
                    fraction(*b),
                    &join(at, [Seg::Key("betas"), Seg::Index(k)]),
                    || format!("{b} is not in [0, 1)"),
                )?;
            }
        }
        check_f32(self.eps, &field("eps"), positive, "a finite value > 0")?;
        check_f32(
            self.alpha,
            &field("alpha"),
            |v| (0.0..=1.0).contains(&v),
            "in [0, 1]",
        )?;
        check_f32(
            self.lr_decay,
            &field("lr_decay"),
            non_negative,
            "a finite value >= 0",
        )?;
        check_f32(
            self.initial_accumulator,
            &field("initial_accumulator"),
            non_negative,
            "a finite value >= 0",
        )?;
        check_f32(
            self.weight_decay,
            &field("weight_decay"),
            non_negative,
            "a finite value >= 0",
        )?;
        check_f32(
            self.clip_norm,
            &field("clip_norm"),
            positive,
            "a finite norm > 0",
        )?;
        check(self.batch_size != Some(0), &field("batch_size"), || {
            "must be at least 1".into()
        })?;
        check(self.epochs != Some(0), &field("epochs"), || {
            "must be at least 1".into()
        })?;
        check_metrics(self.metrics.as_deref(), at)?;
        if let Some(s) = &self.schedule {
            s.to_schedule(&field("schedule"))?;
        }
        self.validate_output_tables(at)
    }

    pub(super) fn checked(&self) -> Result<&TrainingSpec> {
        self.validate(&[Seg::Key("training")]).map_err(|bad| {
            Error::format(
                "model file",
                format!("{}: {}", path_text(&bad.path), bad.detail),
            )
        })?;
        Ok(self)
    }

    /// The loss this section names.
    pub fn loss(&self) -> Result<Loss> {
        let name = self.checked()?.loss.as_deref().ok_or_else(|| {
            Error::format(
                "model file",
                format!("training.loss is missing (one of {LOSSES})"),
            )
        })?;
        parse_loss(name, self.from_logits.unwrap_or(false)).ok_or_else(|| {
            Error::format(
                "model file",
                format!("training.loss '{name}' is not one of {LOSSES}"),
            )
        })
    }

    /// The optimizer this section names, with its hyper-parameters, schedule and clipping.
    pub fn optimizer(&self) -> Result<Optimizer> {
        let name = self.checked()?.optimizer.as_deref().ok_or_else(|| {
            Error::format(
                "model file",
                format!("training.optimizer is missing (one of {OPTIMIZERS})"),
            )
        })?;
        let sgd = matches!(name, "sgd" | "momentum" | "nesterov");
        let lr = self.lr.unwrap_or(if sgd { 0.01 } else { 0.001 });
        let mut opt = Optimizer::from_name(name, lr).ok_or_else(|| {
            Error::format(
                "model file",
                format!("training.optimizer '{name}' is not one of {OPTIMIZERS}"),
            )
        })?;
        opt.rule = self.rule_with_keys(opt.rule);
        if let Some(wd) = self.weight_decay {
            opt.weight_decay = wd;
        }
        opt.clip_norm = self.clip_norm;
        if let Some(s) = &self.schedule {
            opt.schedule = s
                .to_schedule(&[Seg::Key("training"), Seg::Key("schedule")])
                .map_err(|_| Error::format("model file", "training.schedule is invalid"))?;
        }
        Ok(opt)
    }

    /// `rule` with the hyper-parameters this section sets.
    fn rule_with_keys(&self, rule: Rule) -> Rule {
        match rule {
            Rule::Sgd {
                momentum,
                dampening,
                nesterov,
            } => Rule::Sgd {
                momentum: self.momentum.unwrap_or(momentum),
                dampening: self.dampening.unwrap_or(dampening),
                nesterov,
            },
            Rule::Adam {
                beta1,
                beta2,
                eps,
                amsgrad,
            } => {
                let [beta1, beta2] = self.betas.unwrap_or([beta1, beta2]);
                Rule::Adam {
                    beta1,
                    beta2,
                    eps: self.eps.unwrap_or(eps),
                    amsgrad: self.amsgrad.unwrap_or(amsgrad),
                }
            }
            Rule::AdamW { beta1, beta2, eps } => {
                let [beta1, beta2] = self.betas.unwrap_or([beta1, beta2]);
                Rule::AdamW {
                    beta1,
                    beta2,
                    eps: self.eps.unwrap_or(eps),
                }
            }
            Rule::RmsProp {
                alpha,
                eps,
                momentum,
                centered,
            } => Rule::RmsProp {
                alpha: self.alpha.unwrap_or(alpha),
                eps: self.eps.unwrap_or(eps),
                momentum: self.momentum.unwrap_or(momentum),
                centered: self.centered.unwrap_or(centered),
            },
            Rule::Adagrad {
                eps,
                lr_decay,
                initial_accumulator,
            } => Rule::Adagrad {
                eps: self.eps.unwrap_or(eps),
                lr_decay: self.lr_decay.unwrap_or(lr_decay),
                initial_accumulator: self.initial_accumulator.unwrap_or(initial_accumulator),
            },
        }
    }

    /// The metrics this section names (none when absent).
    pub fn metric_list(&self) -> Result<Vec<Metric>> {
        self.checked()?
            .metrics
            .iter()
            .flatten()
            .map(|m| {
                Metric::from_name(m).ok_or_else(|| {
                    Error::format(
                        "model file",
                        format!("training.metrics: unknown metric '{m}'"),
                    )
                })
            })
            .collect()
    }
}

/// Checks each name of the `metrics` list of the table at `at`.
pub(super) fn check_metrics(
    metrics: Option<&[String]>,
    at: &[Seg],
) -> std::result::Result<(), Invalid> {
    for (k, name) in metrics.iter().copied().flatten().enumerate() {
        check(
            Metric::from_name(name).is_some(),
            &join(at, [Seg::Key("metrics"), Seg::Index(k)]),
            || format!("unknown metric '{name}' (known: {METRICS})"),
        )?;
    }
    Ok(())
}

impl ScheduleSpec {
    /// The table describing `schedule`; a warmup inside a warmup has no table form.
    pub fn from_schedule(schedule: &Schedule) -> Result<ScheduleSpec> {
        let (warmup, inner) = match schedule {
            Schedule::Warmup { steps, then } => (Some(*steps), then.as_ref()),
            s => (None, s),
        };
        let mut spec = match *inner {
            Schedule::Constant => ScheduleSpec {
                name: "constant".into(),
                ..ScheduleSpec::default()
            },
            Schedule::Step { step_size, gamma } => ScheduleSpec {
                name: "step".into(),
                step_size: Some(step_size),
                gamma: Some(gamma),
                ..ScheduleSpec::default()
            },
            Schedule::Exponential { gamma } => ScheduleSpec {
                name: "exponential".into(),
                gamma: Some(gamma),
                ..ScheduleSpec::default()
            },
            Schedule::Cosine { t_max, eta_min } => ScheduleSpec {
                name: "cosine".into(),
                t_max: Some(t_max),
                eta_min: Some(eta_min),
                ..ScheduleSpec::default()
            },
            Schedule::Warmup { .. } => {
                return Err(Error::arg(
                    "schedule",
                    "a warmup inside a warmup cannot be written to a model file",
                ))
            }
        };
        spec.warmup = warmup;
        Ok(spec)
    }

    /// The schedule of this table, each key checked against the schedule's name.
    fn to_schedule(&self, at: &[Seg]) -> std::result::Result<Schedule, Invalid> {
        let field = |name: &'static str| join(at, [Seg::Key(name)]);
        let keys = [
            ("step_size", self.step_size.is_some(), ["step", ""]),
            ("gamma", self.gamma.is_some(), ["step", "exponential"]),
            ("t_max", self.t_max.is_some(), ["cosine", ""]),
            ("eta_min", self.eta_min.is_some(), ["cosine", ""]),
        ];
        if let Some((key, _, _)) = keys
            .iter()
            .find(|(_, set, names)| *set && !names.contains(&self.name.as_str()))
        {
            return Err(invalid(
                &field(key),
                format!("does not apply to schedule '{}'", self.name),
            ));
        }
        let required = |name: &'static str, v: Option<usize>| {
            v.ok_or_else(|| {
                invalid(
                    &field(name),
                    format!("schedule '{}' needs {name}", self.name),
                )
            })
            .and_then(|v| check(v > 0, &field(name), || "must be at least 1".into()).map(|_| v))
        };
        let gamma_ok = |v: f32| v.is_finite() && v > 0.0;
        check_f32(self.gamma, &field("gamma"), gamma_ok, "a finite factor > 0")?;
        check_f32(
            self.eta_min,
            &field("eta_min"),
            |v| v.is_finite() && v >= 0.0,
            "a finite rate >= 0",
        )?;
        let base = match self.name.as_str() {
            "constant" => Schedule::Constant,
            "step" => Schedule::Step {
                step_size: required("step_size", self.step_size)?,
                gamma: self.gamma.unwrap_or(0.1),
            },
            "exponential" => Schedule::Exponential {
                gamma: self.gamma.ok_or_else(|| {
                    invalid(&field("gamma"), "schedule 'exponential' needs gamma")
                })?,
            },
            "cosine" => Schedule::Cosine {
                t_max: required("t_max", self.t_max)?,
                eta_min: self.eta_min.unwrap_or(0.0),
            },
            other => {
                return Err(invalid(
                    &field("name"),
                    format!("unknown schedule '{other}' (known: {SCHEDULES})"),
                ))
            }
        };
        Ok(match self.warmup {
            None => base,
            Some(steps) => Schedule::Warmup {
                steps: required("warmup", Some(steps))?,
                then: Box::new(base),
            },
        })
    }
}
