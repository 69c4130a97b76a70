//! Model-file validation: every value checked, each error naming its key and line. The
//! keys of one layer are checked by its file in [`crate::nn::layers`]; this file decides
//! which layer an entry is, and what may share an entry.

use super::schema::{LayerSpec, ModelFile, INITS};
use crate::error::{Error, Result};
use crate::nn::layers::activation::{known_activation, parse_activation, ACTIVATIONS};
use crate::nn::layers::batch_norm::BatchNormLayer;
use crate::nn::layers::dropout::Dropout;
use crate::nn::layers::layer_norm::LayerNormLayer;
use crate::nn::layers::reshape::Reshape;
use crate::nn::layers::{Conv, Dense, Pool};
use crate::nn::{Init, Layer};

/// One step of a path into the file, for messages and line look-ups.
#[derive(Clone, Debug)]
pub(crate) enum Seg {
    Key(&'static str),
    Index(usize),
    /// A key the file itself chose, such as an output's name in `[training.outputs]`.
    Name(String),
}

/// A value that is well-formed TOML but impossible: where, and why.
pub(crate) struct Invalid {
    pub(crate) path: Vec<Seg>,
    pub(crate) detail: String,
}

pub(crate) fn invalid(path: &[Seg], detail: impl Into<String>) -> Invalid {
    Invalid {
        path: path.to_vec(),
        detail: detail.into(),
    }
}

pub(crate) fn path_text(path: &[Seg]) -> String {
    let mut out = String::new();
    for seg in path {
        match seg {
            Seg::Key(k) if out.is_empty() => out += k,
            Seg::Name(k) if out.is_empty() => out += k,
            Seg::Key(k) => {
                out.push('.');
                out += k;
            }
            Seg::Name(k) => {
                out.push('.');
                out += k;
            }
            Seg::Index(i) => out += &format!("[{i}]"),
        }
    }
    out
}

/// The 1-based line of the value at `path` in `text` (or of its nearest present parent).
pub(crate) fn line_of(text: &str, path: &[Seg]) -> Option<usize> {
    let root = toml::de::DeTable::parse(text).ok()?;
    let mut span = None;
    let mut value: Option<&toml::Spanned<toml::de::DeValue>> = None;
    for seg in path {
        let key = match seg {
            Seg::Key(k) => Some(*k),
            Seg::Name(k) => Some(k.as_str()),
            Seg::Index(_) => None,
        };
        let next = match (seg, key, value) {
            (_, Some(k), None) => root
                .get_ref()
                .iter()
                .find(|(key, _)| key.get_ref() == k)
                .map(|(_, v)| v),
            (_, Some(k), Some(v)) => v.get_ref().get(k),
            (Seg::Index(i), _, Some(v)) => v.get_ref().get(*i),
            _ => None,
        };
        match next {
            Some(v) => {
                span = Some(v.span());
                value = Some(v);
            }
            None => break,
        }
    }
    Some(text.get(..span?.start)?.matches('\n').count() + 1)
}

pub(crate) fn check(
    ok: bool,
    path: &[Seg],
    detail: impl FnOnce() -> String,
) -> std::result::Result<(), Invalid> {
    if ok {
        Ok(())
    } else {
        Err(invalid(path, detail()))
    }
}

/// Checks an optional float against a predicate described as `what`.
pub(crate) fn check_f32(
    value: Option<f32>,
    path: &[Seg],
    ok: impl Fn(f32) -> bool,
    what: &str,
) -> std::result::Result<(), Invalid> {
    match value {
        Some(v) => check(ok(v), path, || format!("{v} is not {what}")),
        None => Ok(()),
    }
}

pub(crate) fn join<T>(base: &[Seg], tail: T) -> Vec<Seg>
where
    T: IntoIterator<Item = Seg>,
{
    base.iter().cloned().chain(tail).collect()
}

/// The path of a key of the entry being checked.
pub(crate) type Field<'a> = &'a dyn Fn(&'static str) -> Vec<Seg>;

/// An initializer key of an entry, `default` when absent.
pub(crate) fn init_key(
    field: Field<'_>,
    name: &'static str,
    value: &Option<String>,
    default: Init,
) -> std::result::Result<Init, Invalid> {
    match value {
        None => Ok(default),
        Some(text) => super::schema::parse_init(text).ok_or_else(|| {
            invalid(
                &field(name),
                format!("unknown initializer '{text}' (known: {INITS})"),
            )
        }),
    }
}

impl ModelFile {
    /// Parses and validates a model file; errors name the key and its line.
    pub fn parse(text: &str) -> Result<ModelFile> {
        Self::parse_named(text, "model file")
    }

    pub(crate) fn parse_named(text: &str, what: &str) -> Result<ModelFile> {
        let file: ModelFile = toml::from_str(text).map_err(|e| {
            let message = e.message().trim_end();
            // The parser's messages name the value, not the key: quote the line too.
            let line = e.span().and_then(|s| {
                let start = text.get(..s.start)?;
                let number = start.matches('\n').count() + 1;
                let source = text.lines().nth(number - 1)?.trim();
                Some(format!("line {number} (`{source}`): "))
            });
            Error::format(what, format!("{}{message}", line.unwrap_or_default()))
        })?;
        file.validate().map_err(|bad| {
            let at = match line_of(text, &bad.path) {
                Some(line) => format!("line {line}: "),
                None => String::new(),
            };
            Error::format(
                what,
                format!("{at}{}: {}", path_text(&bad.path), bad.detail),
            )
        })?;
        if file.is_graph() {
            file.checked_graph(Some(text), what)?;
        }
        Ok(file)
    }

    /// Checks every value; `Err` names the field.
    fn validate(&self) -> std::result::Result<(), Invalid> {
        if self.is_graph() {
            self.graph_of().map(|_| ())?;
        } else {
            self.layer_list().map(|_| ())?;
        }
        if let Some(t) = &self.training {
            t.validate(&[Seg::Key("training")])?;
            self.validate_outputs(t)?;
        }
        Ok(())
    }

    /// Features per sample: `input`, or the product of `image`.
    pub(crate) fn input_width(&self) -> usize {
        match (self.input, self.image) {
            (0, Some(img)) => img.iter().product(),
            (n, _) => n,
        }
    }

    /// The layers this file describes, validated.
    pub(crate) fn layer_list(&self) -> std::result::Result<Vec<Layer>, Invalid> {
        let input = self.input_width();
        check(input > 0, &[Seg::Key("input")], || {
            "must be at least 1 (or give image = [channels, height, width])".into()
        })?;
        if let Some(img) = self.image {
            check(
                self.input == 0 || self.input == img.iter().product::<usize>(),
                &[Seg::Key("input")],
                || {
                    format!(
                        "{} is not channels * height * width of image = {img:?}",
                        self.input
                    )
                },
            )?;
        }
        let mut width = input;
        let mut out = Vec::new();
        for (i, spec) in self.layers.iter().enumerate() {
            let at = [Seg::Key("layers"), Seg::Index(i)];
            let field = |name: &'static str| join(&at, [Seg::Key(name)]);
            width = entry_layers(spec, &at, &field, width, &mut out)?;
        }
        Ok(out)
    }
}

/// Appends the layers of one `[[layers]]` entry (a layer and the activation sharing its
/// entry); returns the width after them, 0 where only the built model knows it.
pub(crate) fn entry_layers(
    spec: &LayerSpec,
    at: &[Seg],
    field: Field<'_>,
    width: usize,
    out: &mut Vec<Layer>,
) -> std::result::Result<usize, Invalid> {
    if let Some(layer) = norm_layer(spec, field)? {
        out.push(layer);
        if let Some(name) = &spec.activation {
            out.push(known_activation(name, spec.slope, field)?);
        }
        // Normalisations keep the width.
        return Ok(width);
    }
    check(spec.momentum.is_none(), &field("momentum"), || {
        "only batch_norm layers take this key".into()
    })?;
    check(spec.eps.is_none(), &field("eps"), || {
        "only batch_norm and layer_norm layers take this key".into()
    })?;
    if let Some(layer) = image_layer(spec, field)? {
        out.push(layer);
        if let Some(name) = &spec.activation {
            let act = parse_activation(name, spec.slope).ok_or_else(|| {
                invalid(
                    &field("activation"),
                    format!("unknown activation '{name}' (known: {ACTIVATIONS})"),
                )
            })?;
            out.push(act);
        }
        // Widths after image layers are checked when the model is built.
        return Ok(0);
    }
    match (spec.dense, spec.dropout) {
        (Some(_), Some(_)) => {
            return Err(invalid(
                &field("dropout"),
                "a layer is dense or dropout, not both: give dropout its own [[layers]]",
            ))
        }
        (None, None) if spec.activation.is_none() => {
            return Err(invalid(
                at,
                "a layer needs one of dense = UNITS, activation = NAME or dropout = RATE",
            ))
        }
        _ => {}
    }
    let mut width = width;
    let dense = Dense::from_entry(spec, field, width)?;
    if let Some(Dropout(rate)) = Dropout::from_entry(spec, field)? {
        out.push(Layer::Dropout(rate));
    }
    if let Some(dense) = dense {
        width = dense.units;
        out.push(Layer::Dense(dense));
    }
    match &spec.activation {
        Some(name) => out.push(known_activation(name, spec.slope, field)?),
        None => check(spec.slope.is_none(), &field("slope"), || {
            "a slope needs activation = \"leaky_relu\"".into()
        })?,
    }
    Ok(width)
}

/// The image layer an entry describes, if it is one (conv2d, pooling, flatten, reshape).
fn image_layer(spec: &LayerSpec, field: Field<'_>) -> std::result::Result<Option<Layer>, Invalid> {
    let kinds = [
        spec.conv2d.is_some(),
        spec.max_pool.is_some(),
        spec.avg_pool.is_some(),
        spec.global_avg_pool == Some(true),
        spec.flatten == Some(true),
        spec.reshape.is_some(),
    ];
    let count = kinds.iter().filter(|k| **k).count();
    if count == 0 {
        for (name, set) in [
            ("kernel", spec.kernel.is_some()),
            ("stride", spec.stride.is_some()),
            ("padding", spec.padding.is_some()),
        ] {
            check(!set, &field(name), || {
                "only conv2d layers take this key".into()
            })?;
        }
        return Ok(None);
    }
    check(
        count == 1 && spec.dense.is_none() && spec.dropout.is_none(),
        &field("conv2d"),
        || "one kind of layer per [[layers]] entry".into(),
    )?;
    Ok(Some(if let Some(filters) = spec.conv2d {
        Layer::Conv2d(Conv::from_entry(spec, filters, field)?)
    } else if let Some(k) = spec.max_pool {
        Layer::MaxPool2d(Pool::from_entry(k, "max_pool", field)?)
    } else if let Some(k) = spec.avg_pool {
        Layer::AvgPool2d(Pool::from_entry(k, "avg_pool", field)?)
    } else if let Some(to) = &spec.reshape {
        Layer::Reshape(Reshape::from_entry(to, field)?)
    } else if spec.global_avg_pool == Some(true) {
        Layer::GlobalAvgPool
    } else {
        Layer::Flatten
    }))
}

/// A `batch_norm = true` or `layer_norm = true` entry (its activation is added after).
fn norm_layer(spec: &LayerSpec, field: Field<'_>) -> std::result::Result<Option<Layer>, Invalid> {
    let (batch, layer) = (spec.batch_norm == Some(true), spec.layer_norm == Some(true));
    if !batch && !layer {
        return Ok(None);
    }
    let key = if batch { "batch_norm" } else { "layer_norm" };
    // Only the activation may share the entry.
    let others = LayerSpec {
        batch_norm: None,
        layer_norm: None,
        momentum: None,
        eps: None,
        activation: None,
        slope: None,
        ..spec.clone()
    };
    check(
        !(batch && layer) && others == LayerSpec::default(),
        &field(key),
        || {
            format!("a {key} entry takes only momentum, eps and activation: give other layers their own [[layers]]")
        },
    )?;
    let eps_ok = |v: f32| v.is_finite() && v >= 0.0;
    check_f32(spec.eps, &field("eps"), eps_ok, "a finite value >= 0")?;
    Ok(Some(if layer {
        Layer::LayerNorm(LayerNormLayer::from_entry(spec, field)?)
    } else {
        Layer::BatchNorm(BatchNormLayer::from_entry(spec, field)?)
    }))
}
