//! Text for language models: a vocabulary of characters (or bytes), the text as token
//! ids, and windows of `context` tokens with their next-token targets.
//!
//! Tokens are ids into the vocabulary, sorted so that the same text always gives the same
//! ids; the vocabulary is saved as JSON (`vocab.json` in a run folder) so that later
//! commands encode text the way training did. The last tenth of the text is held out for
//! validation: a contiguous tail, so that no validation window overlaps a training one.

use crate::error::{Error, Result};
use std::io::Read;
use std::path::Path;

/// Whether tokens are characters (Unicode scalar values) or bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Level {
    /// The sorted set of characters of the training text.
    Char,
    /// All 256 byte values: any file encodes, nothing is out of vocabulary.
    Byte,
}

/// A vocabulary: token id `i` is `symbols[i]` (a character's code point, or a byte).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Vocab {
    /// Characters or bytes.
    pub level: Level,
    /// The symbol of each id, ascending.
    pub symbols: Vec<u32>,
}

impl Vocab {
    /// The sorted set of the characters of `text`.
    pub fn chars_of(text: &str) -> Vocab {
        let mut symbols: Vec<u32> = text.chars().map(u32::from).collect();
        symbols.sort_unstable();
        symbols.dedup();
        Vocab {
            level: Level::Char,
            symbols,
        }
    }

    /// Every byte value, in order (id = byte).
    pub fn bytes() -> Vocab {
        Vocab {
            level: Level::Byte,
            symbols: (0..256).collect(),
        }
    }

    /// Number of tokens.
    pub fn len(&self) -> usize {
        self.symbols.len()
    }

    /// Whether it has no tokens.
    pub fn is_empty(&self) -> bool {
        self.symbols.is_empty()
    }

    /// The ids of `text`; a character outside the vocabulary is an error naming it and
    /// its place.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        match self.level {
            Level::Byte => Ok(text.bytes().map(u32::from).collect()),
            Level::Char => text
                .chars()
                .enumerate()
                .map(|(i, c)| {
                    self.symbols
                        .binary_search(&u32::from(c))
                        .map(|id| id as u32)
                        .map_err(|_| {
                            Error::arg(
                                "text",
                                format!(
                                    "character {i} ({c:?}) is not in the vocabulary of {} characters",
                                    self.len()
                                ),
                            )
                        })
                })
                .collect(),
        }
    }

    /// The text of `ids` (ids outside the vocabulary become U+FFFD).
    pub fn decode(&self, ids: &[u32]) -> String {
        let symbol = |&id: &u32| self.symbols.get(id as usize).copied();
        match self.level {
            Level::Byte => {
                let bytes: Vec<u8> = ids
                    .iter()
                    .map(|id| symbol(id).unwrap_or(0xfffd) as u8)
                    .collect();
                String::from_utf8_lossy(&bytes).into_owned()
            }
            Level::Char => ids
                .iter()
                .map(|id| symbol(id).and_then(char::from_u32).unwrap_or('\u{fffd}'))
                .collect(),
        }
    }

    /// The vocabulary as JSON: `{"level": "char", "symbols": [10, 32, ...]}`.
    pub fn to_json(&self) -> String {
        let level = match self.level {
            Level::Char => "char",
            Level::Byte => "byte",
        };
        serde_json::json!({ "level": level, "symbols": self.symbols }).to_string()
    }

    /// Reads [`Vocab::to_json`]'s form back, checking it.
    pub fn from_json(text: &str) -> Result<Vocab> {
        let bad = |detail: String| Error::format("vocab.json", detail);
        let v: serde_json::Value = serde_json::from_str(text).map_err(|e| bad(e.to_string()))?;
        let level = match v.get("level").and_then(|l| l.as_str()) {
            Some("char") => Level::Char,
            Some("byte") => Level::Byte,
            other => return Err(bad(format!("level {other:?} is not \"char\" or \"byte\""))),
        };
        let symbols = v
            .get("symbols")
            .and_then(|s| s.as_array())
            .ok_or_else(|| bad("no \"symbols\" list".into()))?
            .iter()
            .map(|s| s.as_u64().and_then(|s| u32::try_from(s).ok()))
            .collect::<Option<Vec<u32>>>()
            .ok_or_else(|| bad("symbols must be code points".into()))?;
        let sorted = symbols.windows(2).all(|w| w[0] < w[1]);
        if symbols.is_empty() || !sorted {
            return Err(bad("symbols must be a non-empty ascending list".into()));
        }
        Ok(Vocab { level, symbols })
    }

    /// Writes the JSON form to `path`.
    pub fn save(&self, path: &Path) -> Result<()> {
        std::fs::write(path, self.to_json()).map_err(|e| Error::io(path, e))
    }

    /// Reads a vocabulary saved by [`Vocab::save`].
    pub fn load(path: &Path) -> Result<Vocab> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        Vocab::from_json(&text)
    }
}

/// Rows of `context` token ids and, for each, the ids one step later: x = tokens[i..i+N],
/// y = tokens[i+1..i+N+1], as f32 (exact below 2^24).
#[derive(Clone, Debug, PartialEq)]
pub struct Windows {
    /// Row-major ids, `[n, context]`.
    pub x: Vec<f32>,
    /// Next-token ids, `[n, context]`.
    pub y: Vec<f32>,
    /// Rows.
    pub n: usize,
    /// Tokens per row.
    pub context: usize,
}

impl Windows {
    /// Windows starting every `stride` tokens (a stride of `context` uses each target
    /// once); an error if `tokens` hold no window of `context` tokens and a target.
    pub fn of(tokens: &[u32], context: usize, stride: usize) -> Result<Windows> {
        if context == 0 || stride == 0 {
            return Err(Error::arg(
                "context",
                "context and stride must be at least 1",
            ));
        }
        if tokens.len() <= context {
            return Err(Error::arg(
                "context",
                format!(
                    "{context} tokens need a text of at least {} tokens, got {}",
                    context + 1,
                    tokens.len()
                ),
            ));
        }
        let starts: Vec<usize> = (0..tokens.len() - context).step_by(stride).collect();
        let mut x = Vec::with_capacity(starts.len() * context);
        let mut y = Vec::with_capacity(starts.len() * context);
        for &i in &starts {
            x.extend(tokens[i..i + context].iter().map(|&t| t as f32));
            y.extend(tokens[i + 1..i + context + 1].iter().map(|&t| t as f32));
        }
        Ok(Windows {
            x,
            y,
            n: starts.len(),
            context,
        })
    }
}

/// A text data set: its vocabulary and the windows of its training and validation parts.
#[derive(Clone, Debug, PartialEq)]
pub struct TextData {
    /// The vocabulary the ids index.
    pub vocab: Vocab,
    /// Windows of the first 90% of the tokens.
    pub train: Windows,
    /// Windows of the last 10%.
    pub valid: Windows,
}

/// Reads a UTF-8 text file (gzip-compressed when its name ends in `.gz`); an error for a
/// missing, unreadable or empty file.
pub fn read_text(path: &Path) -> Result<String> {
    let raw = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let bytes = if path.extension().is_some_and(|e| e == "gz") {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(raw.as_slice())
            .read_to_end(&mut out)
            .map_err(|e| Error::io(path, e))?;
        out
    } else {
        raw
    };
    if bytes.is_empty() {
        return Err(Error::format(
            path.display().to_string(),
            "the text is empty",
        ));
    }
    String::from_utf8(bytes).map_err(|e| {
        Error::format(
            path.display().to_string(),
            format!("not UTF-8 text: {e} (use byte-level tokens)"),
        )
    })
}

/// Tokens of `text` split into windows: the vocabulary is `vocab` when given (saved by an
/// earlier run; a character outside it is an error), else the sorted characters of the
/// text. The last 10% of the tokens are the validation part.
pub fn windows_of(
    text: &str,
    vocab: Option<Vocab>,
    context: usize,
    stride: usize,
) -> Result<TextData> {
    let vocab = vocab.unwrap_or_else(|| Vocab::chars_of(text));
    let tokens = vocab.encode(text)?;
    let split = tokens.len() - tokens.len() / 10;
    let part = |what: &str, t: &[u32]| {
        Windows::of(t, context, stride).map_err(|e| match e {
            Error::InvalidArgument { detail, .. } => {
                Error::arg("context", format!("the {what} part: {detail}"))
            }
            other => other,
        })
    };
    Ok(TextData {
        train: part("training", &tokens[..split])?,
        valid: part("validation (the last 10%)", &tokens[split..])?,
        vocab,
    })
}

/// [`windows_of`] the file at `path` (see [`read_text`]).
pub fn load(path: &Path, vocab: Option<Vocab>, context: usize, stride: usize) -> Result<TextData> {
    windows_of(&read_text(path)?, vocab, context, stride)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_hold_the_next_token_as_target() {
        let vocab = Vocab::chars_of("abcab");
        assert_eq!(vocab.symbols, vec![97, 98, 99]);
        let ids = vocab.encode("abcab").unwrap();
        let w = Windows::of(&ids, 2, 1).unwrap();
        assert_eq!(w.n, 3);
        assert_eq!(w.x, vec![0.0, 1.0, 1.0, 2.0, 2.0, 0.0]);
        assert_eq!(w.y, vec![1.0, 2.0, 2.0, 0.0, 0.0, 1.0]);
        assert_eq!(vocab.decode(&ids), "abcab");
    }

    #[test]
    fn errors_are_typed() {
        let vocab = Vocab::chars_of("ab");
        assert!(matches!(
            vocab.encode("abz"),
            Err(Error::InvalidArgument { .. })
        ));
        assert!(matches!(
            Windows::of(&[0, 1], 2, 1),
            Err(Error::InvalidArgument { .. })
        ));
        let text = "abcdefghijklmnopqrstuvwxyz";
        assert!(matches!(
            windows_of(text, None, 3, 1),
            Err(Error::InvalidArgument { .. })
        ));
        assert!(windows_of(text, None, 1, 1).is_ok());
        let missing = Path::new("/nonexistent/kiln-text.txt");
        assert!(matches!(read_text(missing), Err(Error::Io { .. })));
    }

    #[test]
    fn vocab_round_trips_through_json() {
        let vocab = Vocab::chars_of("hello, world\n");
        assert_eq!(Vocab::from_json(&vocab.to_json()).unwrap(), vocab);
        let bytes = Vocab::bytes();
        assert_eq!(Vocab::from_json(&bytes.to_json()).unwrap(), bytes);
        assert!(Vocab::from_json("{\"level\":\"char\",\"symbols\":[3,2]}").is_err());
    }
}
