//! The search space: which hyperparameters vary and over what, parsed from the command
//! line (`lr=log:1e-4:1e-1`, `units=32,64,128`) or from a TOML file.

use std::fmt;

use rand::Rng;

use crate::error::{Result, TuneError};

/// A hyperparameter kiln can search over.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Hyper {
    /// Learning rate (the peak of the schedule).
    Lr,
    /// Rows per optimizer step.
    BatchSize,
    /// Units of every hidden dense layer.
    Units,
    /// Number of hidden dense layers.
    Depth,
    /// Activation after each hidden layer.
    Activation,
    /// Optimizer, by its command-line name.
    Optimizer,
    /// L1 penalty on every dense layer's weights.
    L1,
    /// L2 penalty on every dense layer's weights.
    L2,
    /// Dropout rate after each hidden layer.
    Dropout,
}

/// The activations a search may choose, by their command-line names.
pub const ACTIVATIONS: [&str; 6] = ["relu", "leaky_relu", "sigmoid", "tanh", "gelu", "identity"];

impl Hyper {
    /// Every hyperparameter, in the order tables and files list them.
    pub const ALL: [Hyper; 9] = [
        Hyper::Lr,
        Hyper::BatchSize,
        Hyper::Units,
        Hyper::Depth,
        Hyper::Activation,
        Hyper::Optimizer,
        Hyper::L1,
        Hyper::L2,
        Hyper::Dropout,
    ];

    /// The name used on the command line, in space files and in trials.csv.
    pub fn name(self) -> &'static str {
        match self {
            Hyper::Lr => "lr",
            Hyper::BatchSize => "batch_size",
            Hyper::Units => "units",
            Hyper::Depth => "depth",
            Hyper::Activation => "activation",
            Hyper::Optimizer => "optimizer",
            Hyper::L1 => "l1",
            Hyper::L2 => "l2",
            Hyper::Dropout => "dropout",
        }
    }

    /// The hyperparameter named `name` (a dash may stand for the underscore).
    pub fn parse(name: &str) -> Result<Hyper> {
        let wanted = name.trim().replace('-', "_");
        Hyper::ALL
            .into_iter()
            .find(|h| h.name() == wanted)
            .ok_or_else(|| {
                let known: Vec<&str> = Hyper::ALL.iter().map(|h| h.name()).collect();
                TuneError::UnknownName {
                    name: name.trim().to_string(),
                    known: known.join(", "),
                }
                .into()
            })
    }

    /// Whether values are names (activation, optimizer) rather than numbers.
    pub fn is_text(self) -> bool {
        matches!(self, Hyper::Activation | Hyper::Optimizer)
    }

    /// Whether values are whole numbers (batch size, units, depth).
    pub fn is_integer(self) -> bool {
        matches!(self, Hyper::BatchSize | Hyper::Units | Hyper::Depth)
    }

    /// Checks one value against what this hyperparameter takes.
    fn check(self, v: &Value) -> Result<()> {
        let bad = |detail: String| {
            Err(TuneError::BadValue {
                name: self.name().into(),
                detail,
            }
            .into())
        };
        match (self, v) {
            (Hyper::Activation, Value::Text(t)) if ACTIVATIONS.contains(&t.as_str()) => Ok(()),
            (Hyper::Activation, _) => bad(format!("'{v}' is none of {}", ACTIVATIONS.join(", "))),
            (Hyper::Optimizer, Value::Text(t))
                if crate::Optimizer::from_name(t, 1e-3).is_some() =>
            {
                Ok(())
            }
            (Hyper::Optimizer, _) => bad(format!(
                "'{v}' is none of sgd, momentum, nesterov, adam, adamw, rmsprop, adagrad"
            )),
            (_, Value::Text(t)) => bad(format!("'{t}' is not a number")),
            (_, Value::Number(x)) if !x.is_finite() => bad(format!("{x} is not a finite number")),
            (Hyper::Lr, Value::Number(x)) if *x <= 0.0 => bad(format!("{x} is not above 0")),
            (Hyper::L1 | Hyper::L2, Value::Number(x)) if *x < 0.0 => bad(format!("{x} is below 0")),
            (Hyper::Dropout, Value::Number(x)) if !(0.0..1.0).contains(x) => {
                bad(format!("{x} is not in [0, 1)"))
            }
            (h, Value::Number(x)) if h.is_integer() && (*x < 1.0 || x.fract() != 0.0) => {
                bad(format!("{x} is not a whole number of at least 1"))
            }
            _ => Ok(()),
        }
    }
}

impl fmt::Display for Hyper {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One hyperparameter's value in a trial.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    /// A number (learning rate, units, ...).
    Number(f64),
    /// A name (an activation or an optimizer).
    Text(String),
}

impl Value {
    /// The number, if this is one.
    pub fn number(&self) -> Option<f64> {
        match self {
            Value::Number(x) => Some(*x),
            Value::Text(_) => None,
        }
    }

    /// Reads a value of `hyper` as written in a list or in trials.csv.
    pub fn parse(hyper: Hyper, text: &str) -> Result<Value> {
        let text = text.trim();
        let v = if hyper.is_text() {
            Value::Text(text.to_ascii_lowercase().replace('-', "_"))
        } else {
            match text.parse::<f64>() {
                Ok(x) => Value::Number(x),
                Err(_) => Value::Text(text.to_string()),
            }
        };
        hyper.check(&v)?;
        Ok(v)
    }
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Number(x) => write!(f, "{x}"),
            Value::Text(t) => f.write_str(t),
        }
    }
}

/// The values one hyperparameter may take.
#[derive(Clone, Debug, PartialEq)]
pub enum Domain {
    /// A list of values, tried as given.
    Choices(Vec<Value>),
    /// Numbers from `low` to `high`, spaced evenly or (with `log`) evenly in the logarithm.
    Range {
        /// Low end.
        low: f64,
        /// High end.
        high: f64,
        /// Sample and cut the range on a log scale (learning rates, penalties).
        log: bool,
    },
}

impl Domain {
    /// Reads `a,b,c` (choices), `LOW:HIGH` (a range) or `log:LOW:HIGH` (a log range).
    pub fn parse(hyper: Hyper, text: &str) -> Result<Domain> {
        let text = text.trim();
        let bad = |detail: String| TuneError::BadValue {
            name: hyper.name().into(),
            detail,
        };
        let (log, range) = match text.strip_prefix("log:") {
            Some(rest) => (true, Some(rest)),
            None => (false, text.contains(':').then_some(text)),
        };
        let Some(range) = range else {
            let values = text
                .split(',')
                .filter(|s| !s.trim().is_empty())
                .map(|s| Value::parse(hyper, s))
                .collect::<Result<Vec<_>>>()?;
            if values.is_empty() {
                return Err(bad("no values given".into()).into());
            }
            return Ok(Domain::Choices(values));
        };
        let ends: Vec<&str> = range.split(':').collect();
        let [low, high] = ends[..] else {
            return Err(bad(format!("'{text}': a range is LOW:HIGH or log:LOW:HIGH")).into());
        };
        let number = |s: &str| {
            s.trim()
                .parse::<f64>()
                .map_err(|_| bad(format!("'{s}' is not a number")))
        };
        Domain::range(hyper, number(low)?, number(high)?, log)
    }

    /// A range, checked: ends in order, within what `hyper` takes, positive for `log`.
    pub fn range(hyper: Hyper, low: f64, high: f64, log: bool) -> Result<Domain> {
        if hyper.is_text() {
            return Err(TuneError::BadValue {
                name: hyper.name().into(),
                detail: "takes names, not a range: list them, e.g. relu,tanh".into(),
            }
            .into());
        }
        if low > high {
            return Err(TuneError::BackwardRange {
                name: hyper.name().into(),
                low,
                high,
            }
            .into());
        }
        hyper.check(&Value::Number(low))?;
        hyper.check(&Value::Number(high))?;
        if log && low <= 0.0 {
            return Err(TuneError::BadValue {
                name: hyper.name().into(),
                detail: format!("a log range must start above 0, not at {low}"),
            }
            .into());
        }
        Ok(Domain::Range { low, high, log })
    }

    /// The values a grid tries: the choices, or `points` points across a range (both
    /// ends included; whole numbers rounded, repeats dropped).
    pub fn grid(&self, hyper: Hyper, points: usize) -> Vec<Value> {
        match self {
            Domain::Choices(v) => v.clone(),
            &Domain::Range { low, high, log } => {
                let n = points.max(1);
                let mut out: Vec<Value> = Vec::new();
                for i in 0..n {
                    let t = if n == 1 {
                        0.5
                    } else {
                        i as f64 / (n - 1) as f64
                    };
                    let v = Value::Number(tidy(hyper, lerp(low, high, t, log)));
                    if !out.contains(&v) {
                        out.push(v);
                    }
                }
                out
            }
        }
    }

    /// One value drawn at random: a choice, or a point of the range.
    pub fn sample(&self, hyper: Hyper, rng: &mut impl Rng) -> Value {
        match self {
            Domain::Choices(v) => v[rng.random_range(0..v.len())].clone(),
            &Domain::Range { low, high, log } => {
                Value::Number(tidy(hyper, lerp(low, high, rng.random::<f64>(), log)))
            }
        }
    }

    /// How many values there are, when countable (choices, or a range of whole numbers).
    fn count(&self, hyper: Hyper) -> Option<usize> {
        match self {
            Domain::Choices(v) => Some(v.len()),
            Domain::Range { low, high, .. } if hyper.is_integer() => {
                Some((high.round() - low.round()) as usize + 1)
            }
            Domain::Range { .. } => None,
        }
    }
}

/// The point `t` of the way from `low` to `high`, linearly or in the logarithm.
fn lerp(low: f64, high: f64, t: f64, log: bool) -> f64 {
    if log {
        (low.ln() + t * (high.ln() - low.ln())).exp()
    } else {
        low + t * (high - low)
    }
}

/// Rounds a drawn value: whole numbers for counts, three significant digits otherwise
/// (so that trials.csv holds exactly what the trial trained with).
fn tidy(hyper: Hyper, x: f64) -> f64 {
    if hyper.is_integer() {
        return x.round().max(1.0);
    }
    if x == 0.0 {
        return 0.0;
    }
    let scale = 10f64.powi(2 - x.abs().log10().floor() as i32);
    let v = (x * scale).round() / scale;
    // Printing `v` must give the short decimal, not 0.30000000000000004.
    format!("{v:.12e}").parse().unwrap_or(v)
}

/// The hyperparameters a search varies, each with its domain, in the order given.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Space {
    /// Each hyperparameter and its values.
    pub params: Vec<(Hyper, Domain)>,
}

impl Space {
    /// An empty space, to fill with [`Space::set`] or [`Space::param`].
    pub fn new() -> Space {
        Space::default()
    }

    /// Sets (or replaces) one hyperparameter's domain.
    pub fn set(&mut self, hyper: Hyper, domain: Domain) {
        match self.params.iter_mut().find(|(h, _)| *h == hyper) {
            Some(slot) => slot.1 = domain,
            None => self.params.push((hyper, domain)),
        }
    }

    /// Adds one `NAME=VALUES` as given to `--param`: `lr=log:1e-4:1e-1`,
    /// `dropout=0:0.5`, `units=32,64,128`, `optimizer=adam,sgd`.
    pub fn param(&mut self, spec: &str) -> Result<()> {
        let Some((name, values)) = spec.split_once('=') else {
            return Err(TuneError::BadValue {
                name: spec.into(),
                detail: "write NAME=VALUES, e.g. units=32,64 or lr=log:1e-4:1e-1".into(),
            }
            .into());
        };
        let hyper = Hyper::parse(name)?;
        self.set(hyper, Domain::parse(hyper, values)?);
        Ok(())
    }

    /// Reads a space file: one key per hyperparameter, whose value is a string in the
    /// `--param` syntax, a list of values, or a single value.
    pub fn from_toml(text: &str, what: &str) -> Result<Space> {
        let table: toml::Table = toml::from_str(text).map_err(|e| {
            crate::Error::format(format!("{what} (a TOML search space)"), e.to_string())
        })?;
        let mut space = Space::new();
        for (key, value) in &table {
            let hyper = Hyper::parse(key)?;
            let domain = match value {
                toml::Value::String(s) => Domain::parse(hyper, s)?,
                toml::Value::Array(items) => {
                    let texts: Vec<String> = items.iter().map(toml_text).collect();
                    Domain::parse(hyper, &texts.join(","))?
                }
                other => Domain::parse(hyper, &toml_text(other))?,
            };
            space.set(hyper, domain);
        }
        Ok(space)
    }

    /// Fails on an empty space.
    pub fn check(&self) -> Result<()> {
        if self.params.is_empty() {
            return Err(TuneError::EmptySpace.into());
        }
        Ok(())
    }

    /// The hyperparameters varied, in order.
    pub fn names(&self) -> Vec<Hyper> {
        self.params.iter().map(|(h, _)| *h).collect()
    }

    /// The number of distinct configurations, when every domain is countable.
    pub fn size(&self) -> Option<usize> {
        self.params
            .iter()
            .try_fold(1usize, |n, (h, d)| n.checked_mul(d.count(*h)?))
    }
}

/// A TOML scalar as `--param` text.
fn toml_text(v: &toml::Value) -> String {
    match v {
        toml::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// One trial's hyperparameters: a value for each of the space's, in its order.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Config(pub Vec<(Hyper, Value)>);

impl Config {
    /// The value of `hyper`, if the search varies it.
    pub fn get(&self, hyper: Hyper) -> Option<&Value> {
        self.0.iter().find(|(h, _)| *h == hyper).map(|(_, v)| v)
    }

    /// The values that fix the model's shape (units and depth): trials that agree on
    /// them can train side by side.
    pub fn shape_key(&self) -> String {
        let part = |h: Hyper| self.get(h).map_or(String::from("-"), |v| v.to_string());
        format!("{}x{}", part(Hyper::Units), part(Hyper::Depth))
    }
}

impl fmt::Display for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self.0.iter().map(|(h, v)| format!("{h}={v}")).collect();
        f.write_str(&parts.join(" "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn params_parse_ranges_and_lists() {
        let mut s = Space::new();
        s.param("lr=log:1e-4:1e-1").unwrap();
        s.param("units=32,64,128").unwrap();
        s.param("optimizer=adam,SGD").unwrap();
        s.param("dropout=0:0.5").unwrap();
        assert_eq!(s.params.len(), 4);
        assert_eq!(
            s.params[2].1,
            Domain::Choices(vec![Value::Text("adam".into()), Value::Text("sgd".into())])
        );
        let lr = s.params[0].1.grid(Hyper::Lr, 4);
        assert_eq!(
            lr,
            [1e-4, 1e-3, 1e-2, 1e-1].map(Value::Number).to_vec(),
            "a log range is cut evenly in the logarithm"
        );
        assert_eq!(s.size(), None);
        assert!(matches!(
            Domain::parse(Hyper::Lr, "0.1:0.01"),
            Err(crate::Error::Tune(TuneError::BackwardRange { .. }))
        ));
        assert!(Domain::parse(Hyper::Activation, "relu:tanh").is_err());
        assert!(Domain::parse(Hyper::Units, "0,3").is_err());
        assert!(Domain::parse(Hyper::Dropout, "0.1,1.5").is_err());
    }

    #[test]
    fn toml_spaces_take_strings_lists_and_numbers() {
        let s = Space::from_toml(
            "lr = \"log:1e-3:1e-2\"\nunits = [16, 32]\ndepth = 2\nactivation = [\"relu\", \"tanh\"]\n",
            "space.toml",
        )
        .unwrap();
        assert_eq!(
            s.names(),
            [Hyper::Lr, Hyper::Units, Hyper::Depth, Hyper::Activation]
        );
        assert_eq!(s.params[2].1, Domain::Choices(vec![Value::Number(2.0)]));
        assert!(Space::from_toml("width = [1]", "x").is_err());
    }

    #[test]
    fn samples_stay_in_range_and_are_tidy() {
        let d = Domain::range(Hyper::Lr, 1e-4, 1e-1, true).unwrap();
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        for _ in 0..100 {
            let x = d.sample(Hyper::Lr, &mut rng).number().unwrap();
            assert!((1e-4..=1e-1).contains(&x), "{x}");
            assert_eq!(x.to_string().parse::<f64>().unwrap(), x);
            assert!(x.to_string().len() <= 8, "{x}");
        }
        let units = Domain::range(Hyper::Units, 8.0, 10.0, false).unwrap();
        assert_eq!(units.count(Hyper::Units), Some(3));
    }

    use rand::SeedableRng;
}
