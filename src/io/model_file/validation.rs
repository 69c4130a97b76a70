//! Model-file validation: every value checked, each error naming its key and line. The
//! keys of one layer are read by its file in [`crate::nn::layers`]; [`super::entry`]
//! decides which registered layer an entry is, and what may share it.

use super::entry::{entry_layers, Entry};
use super::schema::ModelFile;
use crate::error::{Error, Result};
use crate::nn::Layer;

/// One step of a path into the file, for messages and line look-ups.
#[derive(Clone, Debug)]
pub(crate) enum Seg {
    Key(&'static str),
    /// A key the file itself chose: an output's name in `[training.outputs]`, or a key
    /// no layer takes.
    Name(String),
    Index(usize),
}

impl Seg {
    fn key(&self) -> Option<&str> {
        match self {
            Seg::Key(k) => Some(k),
            Seg::Name(k) => Some(k),
            Seg::Index(_) => None,
        }
    }
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
        match (seg, seg.key()) {
            (_, Some(k)) if out.is_empty() => out += k,
            (_, Some(k)) => {
                out.push('.');
                out += k;
            }
            (Seg::Index(i), None) => out += &format!("[{i}]"),
            (_, None) => {}
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
        let next = match (seg, seg.key(), value) {
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
            let entry = Entry {
                spec,
                field: &field,
                width,
            };
            for layer in entry_layers(&entry, &at)? {
                width = width_after(&layer, width);
                out.push(layer);
            }
        }
        Ok(out)
    }
}

/// The width after `layer` given the one before it, 0 where only the built model knows
/// it (after image layers); the layer's own shape rule says.
fn width_after(layer: &Layer, width: usize) -> usize {
    match layer.def().output_shape("", &[width]).as_deref() {
        Ok([w]) => *w,
        _ => 0,
    }
}
