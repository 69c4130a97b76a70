//! Reading one layer entry: the typed getters the layer files use on their own keys
//! (each error names the key, and so its line), and the dispatch that finds which
//! registered layer an entry is ([`crate::nn::layers::KINDS`]) and what may share it.

use super::schema::{parse_init, LayerSpec, INITS};
use super::validation::{check, invalid, Field, Invalid, Seg};
use crate::nn::layers::{Kind, Layer, ACTIVATION_KEY, KINDS};
use crate::nn::Init;

/// One entry being read, and where it is in the file.
pub(crate) struct Entry<'a> {
    /// Its keys.
    pub(crate) spec: &'a LayerSpec,
    /// The path of one of its keys.
    pub(crate) field: Field<'a>,
    /// The previous layer's width: 0 where only the built model knows it.
    pub(crate) width: usize,
}

type Read<T> = std::result::Result<Option<T>, Invalid>;

impl<'a> Entry<'a> {
    /// An error at `key`.
    pub(crate) fn error(&self, key: &'static str, detail: impl Into<String>) -> Invalid {
        invalid(&(self.field)(key), detail)
    }

    /// Checks `ok`, else an error at `key`.
    pub(crate) fn check(
        &self,
        ok: bool,
        key: &'static str,
        detail: impl FnOnce() -> String,
    ) -> std::result::Result<(), Invalid> {
        check(ok, &(self.field)(key), detail)
    }

    /// The value at `key` read by `read`, or an error saying what it should be.
    fn read<T>(
        &self,
        key: &'static str,
        what: &str,
        read: impl Fn(&toml::Value) -> Option<T>,
    ) -> Read<T> {
        match self.spec.get(key) {
            None => Ok(None),
            Some(v) => read(v)
                .map(Some)
                .ok_or_else(|| self.error(key, format!("{v} is not {what}"))),
        }
    }

    /// A count (a whole number >= 0).
    pub(crate) fn usize(&self, key: &'static str) -> Read<usize> {
        self.read(key, "a whole number >= 0", count)
    }

    /// A number (integers too, as serde reads them).
    pub(crate) fn f32(&self, key: &'static str) -> Read<f32> {
        self.read(key, "a number", |v| match v {
            toml::Value::Float(f) => Some(*f as f32),
            toml::Value::Integer(i) => Some(*i as f32),
            _ => None,
        })
    }

    /// A number that `ok` accepts, described as `what` when it does not.
    pub(crate) fn f32_where(
        &self,
        key: &'static str,
        ok: impl Fn(f32) -> bool,
        what: &str,
    ) -> Read<f32> {
        let v = self.f32(key)?;
        match v {
            Some(v) if !ok(v) => Err(self.error(key, format!("{v} is not {what}"))),
            _ => Ok(v),
        }
    }

    /// true or false.
    pub(crate) fn bool(&self, key: &'static str) -> Read<bool> {
        self.read(key, "true or false", toml::Value::as_bool)
    }

    /// A kind key that is a switch: it must say `true`.
    pub(crate) fn flag(&self, key: &'static str) -> std::result::Result<(), Invalid> {
        let on = self.bool(key)?;
        self.check(on == Some(true), key, || {
            format!("leave {key} out, or set it to true")
        })
    }

    /// A string.
    pub(crate) fn str(&self, key: &'static str) -> Read<&'a str> {
        let spec: &'a LayerSpec = self.spec;
        match spec.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_str()
                .map(Some)
                .ok_or_else(|| self.error(key, format!("{v} is not a string"))),
        }
    }

    /// A list of counts.
    pub(crate) fn usizes(&self, key: &'static str) -> Read<Vec<usize>> {
        self.read(key, "a list of whole numbers >= 0", |v| {
            v.as_array()?.iter().map(count).collect()
        })
    }

    /// An initializer, `default` when absent.
    pub(crate) fn init(
        &self,
        key: &'static str,
        default: Init,
    ) -> std::result::Result<Init, Invalid> {
        match self.str(key)? {
            None => Ok(default),
            Some(text) => parse_init(text).ok_or_else(|| {
                self.error(
                    key,
                    format!("unknown initializer '{text}' (known: {INITS})"),
                )
            }),
        }
    }
}

fn count(v: &toml::Value) -> Option<usize> {
    v.as_integer().and_then(|i| usize::try_from(i).ok())
}

/// Whether `kind` names the entry's layer: its key is there, and not `= false`.
fn names(spec: &LayerSpec, kind: &Kind) -> bool {
    kind.key
        .and_then(|key| spec.get(key))
        .is_some_and(|v| v.as_bool() != Some(false))
}

/// The registered layer an entry is, and whether an activation rides along after it.
pub(crate) fn entry_kind(
    spec: &LayerSpec,
    at: &[Seg],
) -> std::result::Result<(&'static Kind, Option<&'static Kind>), Invalid> {
    let field = |key: &'static str| super::validation::join(at, [Seg::Key(key)]);
    let named: Vec<&'static Kind> = KINDS.iter().filter(|k| names(spec, k)).collect();
    let activation = named
        .iter()
        .copied()
        .find(|k| k.key == Some(ACTIVATION_KEY));
    let main: Vec<&'static Kind> = named
        .iter()
        .copied()
        .filter(|k| k.key != Some(ACTIVATION_KEY))
        .collect();
    let kind = match (main.as_slice(), activation) {
        ([], Some(act)) => return Ok((act, None)),
        ([], None) => {
            let keys: Vec<&str> = KINDS.iter().filter_map(|k| k.key).collect();
            return Err(invalid(
                at,
                format!("a layer needs one of the keys {}", keys.join(", ")),
            ));
        }
        ([one], _) => *one,
        ([first, second, ..], _) => {
            let key = second.key.unwrap_or_default();
            return Err(invalid(
                &field(key),
                format!(
                    "one layer per entry: {} and {key} each need their own (only an \
                     activation may share a layer's entry)",
                    first.key.unwrap_or_default()
                ),
            ));
        }
    };
    if let Some(key) = activation.and(kind.key).filter(|_| !kind.activation_after) {
        return Err(invalid(
            &field(ACTIVATION_KEY),
            format!("a {key} layer has no activation: give it its own entry"),
        ));
    }
    Ok((kind, activation))
}

/// Every key of the entry is one its layers take; else an error naming the first other.
pub(crate) fn check_keys(
    spec: &LayerSpec,
    field: Field<'_>,
    kinds: &[&Kind],
) -> std::result::Result<(), Invalid> {
    let takes = |k: &Kind, key: &str| k.key == Some(key) || k.keys.contains(&key);
    for (key, value) in &spec.0 {
        let ignored_flag =
            value.as_bool() == Some(false) && KINDS.iter().any(|k| k.key == Some(key));
        if ignored_flag || kinds.iter().any(|k| takes(k, key)) {
            continue;
        }
        let owners: Vec<&str> = KINDS
            .iter()
            .filter(|k| takes(k, key))
            .filter_map(|k| k.key)
            .collect();
        // The entry's path, then the key as the file spells it (no layer names it).
        let mut path = field("");
        path.pop();
        path.push(Seg::Name(key.clone()));
        return Err(match owners.as_slice() {
            [] => {
                let taken: Vec<&str> = kinds
                    .iter()
                    .flat_map(|k| k.key.into_iter().chain(k.keys.iter().copied()))
                    .collect();
                invalid(
                    &path,
                    format!(
                        "unknown key `{key}` (this entry takes {})",
                        taken.join(", ")
                    ),
                )
            }
            owners => invalid(
                &path,
                format!("only {} layers take this key", owners.join(" and ")),
            ),
        });
    }
    Ok(())
}

/// The layers of one entry: its layer, and the activation sharing its entry after it.
pub(crate) fn entry_layers(
    entry: &Entry<'_>,
    at: &[Seg],
) -> std::result::Result<Vec<Layer>, Invalid> {
    let (kind, activation) = entry_kind(entry.spec, at)?;
    let kinds: Vec<&Kind> = std::iter::once(kind).chain(activation).collect();
    check_keys(entry.spec, entry.field, &kinds)?;
    kinds.iter().map(|k| (k.parse)(entry)).collect()
}
