//! Seeded fuzzing of every parser that reads outside data, inside the ordinary test suite
//! (no cargo-fuzz toolchain): each generator feeds at least 10,000 inputs, and every call
//! must return (Ok or a typed error), never panic; a panic fails the test with the seed
//! and case number that reproduce it. `KILN_FUZZ_CASES` raises the count for longer runs.
//!
//! Parsers covered: IDX (raw and gzip), numeric CSV (with each delimiter and quoting), model-file TOML, and the
//! safetensors checkpoint loaders (weights file and checkpoint directory).

use flate2::write::GzEncoder;
use flate2::Compression;
use kiln::data::{csv, idx, Dataset};
use kiln::io::{self, ModelFile};
use kiln::{Device, Error, Loss, Optimizer, Sequential};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::io::Write;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

/// Inputs per generator (at least 10,000).
fn cases() -> usize {
    std::env::var("KILN_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000)
        .max(10_000)
}

/// Runs `case(rng, i)` for every case with its own seed, naming the failing one.
fn fuzz(name: &str, seed: u64, mut case: impl FnMut(&mut StdRng, usize)) {
    let n = cases();
    for i in 0..n {
        let mut rng = StdRng::seed_from_u64(seed ^ (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15));
        if catch_unwind(AssertUnwindSafe(|| case(&mut rng, i))).is_err() {
            panic!("{name}: case {i} (seed {seed}) panicked; rerun it alone to see the input");
        }
    }
}

fn gz(bytes: &[u8]) -> Vec<u8> {
    let mut e = GzEncoder::new(Vec::new(), Compression::fast());
    e.write_all(bytes).unwrap();
    e.finish().unwrap()
}

/// A valid IDX file: images (3 dims) or labels (1 dim), with small random dimensions.
fn valid_idx(rng: &mut StdRng) -> (Vec<u8>, Vec<u32>) {
    let images = rng.random_bool(0.5);
    let dims: Vec<u32> = if images {
        (0..3).map(|_| rng.random_range(0..6)).collect()
    } else {
        vec![rng.random_range(0..40)]
    };
    let mut v = vec![0, 0, 8, dims.len() as u8];
    for d in &dims {
        v.extend_from_slice(&d.to_be_bytes());
    }
    let payload: usize = dims.iter().map(|&d| d as usize).product();
    v.extend((0..payload).map(|_| rng.random::<u8>()));
    (v, dims)
}

/// Values a mutated header field likes to take: edges of u32 and of the allocation sizes.
fn edge_u32(rng: &mut StdRng) -> u32 {
    const EDGES: [u32; 9] = [0, 1, 2, 255, 256, 1 << 16, 1 << 24, 1 << 31, u32::MAX];
    if rng.random_bool(0.7) {
        EDGES[rng.random_range(0..EDGES.len())]
    } else {
        rng.random()
    }
}

/// One to four random edits: byte flips, inserts, deletes, cuts, extensions, header fields.
fn mutate(rng: &mut StdRng, v: &mut Vec<u8>) {
    for _ in 0..rng.random_range(1..=4) {
        match rng.random_range(0..7) {
            0 if !v.is_empty() => {
                let i = rng.random_range(0..v.len());
                v[i] = rng.random();
            }
            1 => {
                let i = rng.random_range(0..=v.len());
                v.insert(i, rng.random());
            }
            2 if !v.is_empty() => {
                v.remove(rng.random_range(0..v.len()));
            }
            3 => v.truncate(rng.random_range(0..=v.len())),
            4 => v.extend((0..rng.random_range(1..64)).map(|_| rng.random::<u8>())),
            5 if v.len() >= 8 => {
                // Overwrite a dimension (header bytes 4..16) with an edge value.
                let field = rng.random_range(1..=((v.len() - 4) / 4).min(3));
                v[4 * field..4 * field + 4].copy_from_slice(&edge_u32(rng).to_be_bytes());
            }
            6 if v.len() >= 4 => v[rng.random_range(0..4)] = rng.random(),
            _ => {}
        }
    }
}

/// Parses `bytes` both ways and checks what an Ok result promises.
fn parse_idx(bytes: &[u8]) {
    match idx::parse_images(bytes, "fuzz") {
        Ok((pixels, n, rows, cols)) => assert_eq!(pixels.len(), n * rows * cols),
        Err(e) => assert!(matches!(e, Error::Format { .. }), "{e}"),
    }
    if let Err(e) = idx::parse_labels(bytes, "fuzz") {
        assert!(matches!(e, Error::Format { .. }), "{e}");
    }
}

#[test]
fn idx_random_bytes() {
    fuzz("idx random bytes", 1, |rng, i| {
        let len = rng.random_range(0..48);
        let mut v: Vec<u8> = (0..len).map(|_| rng.random()).collect();
        // Half start like IDX, so the parser gets past the magic.
        if i % 2 == 0 && v.len() >= 4 {
            v[..3].copy_from_slice(&[0, 0, 8]);
            v[3] = rng.random_range(0..5);
        }
        parse_idx(&v);
    });
}

#[test]
fn idx_valid_then_mutated() {
    fuzz("idx mutated", 2, |rng, i| {
        let (mut v, dims) = valid_idx(rng);
        if i % 10 == 0 {
            // Unmutated files must load, with the dimensions and bytes written.
            if let [n, r, c] = dims.as_slice() {
                let (pixels, n2, r2, c2) = idx::parse_images(&v, "valid").unwrap();
                let want = (*n as usize, *r as usize, *c as usize);
                assert_eq!(((n2, r2, c2), &pixels[..]), (want, &v[16..]));
            } else {
                assert_eq!(idx::parse_labels(&v, "valid").unwrap(), &v[8..]);
            }
        }
        mutate(rng, &mut v);
        parse_idx(&v);
    });
}

#[test]
fn idx_gzip_wrapped() {
    fuzz("idx gzip", 3, |rng, i| {
        let (mut v, _) = valid_idx(rng);
        if i % 2 == 0 {
            mutate(rng, &mut v);
        }
        let mut packed = gz(&v);
        if i % 3 == 0 {
            // Corrupt the compressed stream itself (header, deflate data or trailer).
            mutate(rng, &mut packed);
            if packed.len() >= 2 && rng.random_bool(0.8) {
                packed[..2].copy_from_slice(&[0x1f, 0x8b]);
            }
        } else {
            match (
                idx::parse_images(&v, "raw"),
                idx::parse_images(&packed, "gz"),
            ) {
                (Ok(a), Ok(b)) => assert_eq!(a, b, "gzip must not change the result"),
                (Err(_), Err(_)) => {}
                (a, b) => panic!("raw {a:?} but gzip {b:?}"),
            }
        }
        parse_idx(&packed);
    });
}

/// Tokens of numeric CSV, the odd ones included: quotes, huge and non-finite numbers.
const TOKENS: [&str; 24] = [
    "0",
    "1",
    "2",
    "-3",
    "4.5",
    "1e3",
    "-0",
    "0.000001",
    "1e38",
    "3.5e38",
    "1e39",
    "340282356779733661637539395458142568448",
    "1e-45",
    "NaN",
    "inf",
    "-inf",
    "\"7\"",
    "\"\"",
    "\" 8 \"",
    "\"a\"\"b\"",
    "x",
    "",
    " 9 ",
    "\t10",
];

fn structured_csv(rng: &mut StdRng) -> String {
    let cols = rng.random_range(1..6);
    let mut text = String::new();
    if rng.random_bool(0.05) {
        text.push('\u{feff}');
    }
    let names: Vec<String> = (0..cols).map(|j| format!("c{j}")).collect();
    text += &names.join(",");
    for _ in 0..rng.random_range(0..8) {
        text += if rng.random_bool(0.2) { "\r\n" } else { "\n" };
        // Usually the header's width, sometimes ragged.
        let width = if rng.random_bool(0.85) {
            cols
        } else {
            rng.random_range(0..cols + 2)
        };
        let fields: Vec<&str> = (0..width)
            .map(|_| {
                if rng.random_bool(0.8) {
                    TOKENS[rng.random_range(0..3)]
                } else {
                    TOKENS[rng.random_range(0..TOKENS.len())]
                }
            })
            .collect();
        text += &fields.join(",");
    }
    text
}

fn random_csv(rng: &mut StdRng) -> String {
    const ALPHABET: &[u8] = b"0123456789.,-+eE\"\n\r \tnaif,,\n;;|";
    let len = rng.random_range(0..80);
    (0..len)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect()
}

/// Parses `text` with every option and checks what an Ok data set promises, and that
/// an error names a line the text has.
fn parse_csv(rng: &mut StdRng, text: &str) {
    let label = match rng.random_range(0..3) {
        0 => None,
        1 => Some("c0"),
        _ => Some("y"),
    };
    let delimiter = [b',', b',', b';', b'\t', b'|'][rng.random_range(0..5)];
    for classes in [None, Some(true), Some(false)] {
        let options = csv::Options::new(label, classes).delimiter(delimiter);
        match csv::parse_with(text, "fuzz", &options) {
            Ok(d) => check_dataset(&d),
            Err(Error::Format { detail, .. }) => check_line(text, &detail),
            Err(e) => panic!("expected a Format error, got {e}"),
        }
    }
}

/// A "line N" in an error is a line of `text`.
fn check_line(text: &str, detail: &str) {
    if let Some(rest) = detail.strip_prefix("line ") {
        let digits: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
        let line: usize = digits.parse().unwrap();
        let lines = text.matches('\n').count() + 1;
        assert!(
            (1..=lines).contains(&line),
            "{detail:?}: the text has {lines} lines"
        );
    }
}

/// Values of a table, header included, as the CSV reader should see them.
fn structured_table(rng: &mut StdRng) -> Vec<Vec<String>> {
    const VALUES: [&str; 12] = [
        "0", "1", "2", "-3.5", "1e3", "x", "", " 9 ", "NaN", "1e39", "a \"q\"", "4;5",
    ];
    let cols = rng.random_range(1..5);
    let mut table = vec![(0..cols)
        .map(|j| {
            if rng.random_bool(0.2) {
                format!("c{j}, \"x\"|\ty")
            } else {
                format!("c{j}")
            }
        })
        .collect::<Vec<_>>()];
    for _ in 0..rng.random_range(0..6) {
        let width = if rng.random_bool(0.9) {
            cols
        } else {
            rng.random_range(1..cols + 2)
        };
        let row = (0..width)
            .map(|_| {
                let i = if rng.random_bool(0.8) {
                    0..5
                } else {
                    0..VALUES.len()
                };
                VALUES[rng.random_range(i)].to_string()
            })
            .collect();
        table.push(row);
    }
    table
}

/// `table` as CSV with `delimiter`: a value is quoted when it must be (it holds the
/// delimiter, a quote or a blank the delimiter would split) and, with `quote_all`, at
/// random; `newlines` adds a line break to the end of quoted values, which trimming
/// takes off again.
fn render(
    rng: &mut StdRng,
    table: &[Vec<String>],
    delimiter: u8,
    quote_all: bool,
    newlines: bool,
) -> String {
    let d = delimiter as char;
    let end = if quote_all && rng.random_bool(0.3) {
        "\r\n"
    } else {
        "\n"
    };
    let rows: Vec<String> = table
        .iter()
        .map(|row| {
            let fields: Vec<String> = row
                .iter()
                .map(|v| {
                    let must = v.contains(d) || v.contains('"');
                    // A lone empty value quoted is a row; unquoted, a blank line.
                    let lone_blank = row.len() == 1 && v.trim().is_empty();
                    if must || (quote_all && !lone_blank && rng.random_bool(0.5)) {
                        let nl = if newlines && rng.random_bool(0.5) {
                            "\n"
                        } else {
                            ""
                        };
                        format!("\"{}{nl}\"", v.replace('"', "\"\""))
                    } else {
                        v.clone()
                    }
                })
                .collect();
            fields.join(&d.to_string())
        })
        .collect();
    rows.join(end)
}

/// The error text without the delimiter hint, which depends on the delimiter.
fn without_hint(e: &Error) -> String {
    let text = e.to_string();
    text.split(" (read with delimiter")
        .next()
        .unwrap()
        .to_string()
}

#[test]
fn csv_delimiters_and_quoting_agree() {
    fuzz("csv delimiters", 7, |rng, _| {
        let table = structured_table(rng);
        let label = ["c0", "c1"][rng.random_range(0..2)];
        let classes = [None, Some(true), Some(false)][rng.random_range(0..3)];
        let plain = render(rng, &table, b',', false, false);
        let expected = csv::parse(&plain, "fuzz", Some(label), classes);
        let delimiter = [b',', b';', b'\t', b'|'][rng.random_range(0..4)];
        let options = csv::Options::new(Some(label), classes).delimiter(delimiter);
        // Other delimiters and quoting: the same data set, or the same error.
        let text = render(rng, &table, delimiter, true, false);
        match (&expected, csv::parse_with(&text, "fuzz", &options)) {
            (Ok(a), Ok(b)) => assert_eq!(a, &b, "{plain:?} / {text:?}"),
            (Err(a), Err(b)) => {
                assert_eq!(without_hint(a), without_hint(&b), "{plain:?} / {text:?}")
            }
            (a, b) => panic!("{plain:?} gives {a:?} but {text:?} gives {b:?}"),
        }
        // Line breaks inside quotes: the same data set, or an error on a later line.
        let text = render(rng, &table, delimiter, true, true);
        match (&expected, csv::parse_with(&text, "fuzz", &options)) {
            (Ok(a), Ok(b)) => assert_eq!(a, &b, "{plain:?} / {text:?}"),
            (Err(_), Err(Error::Format { detail, .. })) => check_line(&text, &detail),
            (a, b) => panic!("{plain:?} gives {a:?} but {text:?} gives {b:?}"),
        }
    });
}

fn check_dataset(d: &Dataset) {
    assert_eq!(d.x.len(), d.n * d.features);
    assert_eq!(d.y.len(), d.n);
    assert!(d.n > 0 && d.features > 0);
    assert!(d.x.iter().chain(&d.y).all(|v| v.is_finite()));
    if d.classes > 0 {
        assert!(d
            .y
            .iter()
            .all(|&v| v >= 0.0 && v.fract() == 0.0 && (v as usize) < d.classes));
        assert_eq!(d.one_hot().map(|h| h.len()).unwrap_or(0), d.n * d.classes);
    }
    d.validate()
        .unwrap_or_else(|e| panic!("parsed set invalid: {e}"));
}

#[test]
fn csv_structured() {
    fuzz("csv structured", 4, |rng, _| {
        let text = structured_csv(rng);
        parse_csv(rng, &text);
    });
}

#[test]
fn csv_random_text() {
    fuzz("csv random", 5, |rng, _| {
        let text = random_csv(rng);
        parse_csv(rng, &text);
    });
}

#[test]
fn dataset_operations_on_random_arguments() {
    fuzz("dataset ops", 6, |rng, _| {
        let n = rng.random_range(0..6);
        let features = rng.random_range(0..4);
        let mut d = Dataset {
            x: (0..n * features).map(|i| i as f32).collect(),
            y: (0..n).map(|_| rng.random_range(-1..4) as f32).collect(),
            n,
            features,
            classes: rng.random_range(0..4),
            image: None,
        };
        // Public fields may disagree with each other.
        match rng.random_range(0..6) {
            0 => d.n = rng.random_range(0..8),
            1 => d.features = [0, 1, usize::MAX][rng.random_range(0..3)],
            2 => d.image = Some((rng.random_range(0..3), 2, usize::MAX / 2)),
            _ => {}
        }
        let indices: Vec<usize> = (0..rng.random_range(0..5))
            .map(|_| [0, 1, 5, usize::MAX][rng.random_range(0..4)])
            .collect();
        let fraction = [0.0, 0.5, 1.0, -1.0, 2.0, f32::NAN][rng.random_range(0..6)];
        let _ = d.batch(&indices);
        let _ = d.select(&indices);
        let _ = d.split(fraction, rng.random());
        let _ = d.one_hot();
        let _ = d.validate();
        let how = [
            kiln::data::Scaling::Standardize,
            kiln::data::Scaling::MinMax,
            kiln::data::Scaling::Divide(fraction),
        ][rng.random_range(0..3)];
        let _ = d.clone().scale(how);
    });
}

/// Model files to start from: dense and image models, with and without a training setup,
/// and one with normalization layers and reshapes.
const MODEL_FILES: [&str; 4] = [
    "input = 4\n[[layers]]\ndense = 8\nactivation = \"relu\"\n[[layers]]\ndropout = 0.2\n\
     [[layers]]\ndense = 3\n[training]\nloss = \"sparse_categorical_crossentropy\"\n\
     optimizer = \"adam\"\nlr = 0.001\nbetas = [0.9, 0.999]\nclip_norm = 1.0\n\
     metrics = [\"accuracy\"]\n",
    "image = [1, 6, 6]\n[[layers]]\nconv2d = 2\nkernel = 3\npadding = \"same\"\n\
     activation = \"relu\"\n[[layers]]\nmax_pool = 2\n[[layers]]\nflatten = true\n\
     [[layers]]\ndense = 2\nkernel_init = \"random_uniform(-0.5, 0.5)\"\n",
    "input = 3\n[[layers]]\ndense = 1\nuse_bias = false\nl2 = 0.01\n\
     [[layers]]\nactivation = \"leaky_relu\"\nslope = 0.1\n[training]\nloss = \"mse\"\n\
     optimizer = \"momentum\"\nmomentum = 0.5\nweight_decay = 0.1\n\
     [training.schedule]\nname = \"step\"\nstep_size = 2\ngamma = 0.5\n",
    "input = 36\n[[layers]]\nreshape = [1, 6, 6]\n[[layers]]\nconv2d = 2\npadding = \"same\"\n\
     [[layers]]\nbatch_norm = true\nmomentum = 0.1\nactivation = \"relu\"\n\
     [[layers]]\nreshape = [72]\n[[layers]]\ndense = 4\n\
     [[layers]]\nlayer_norm = true\neps = 1e-5\n[[layers]]\ndense = 2\n",
];

/// Values a mutated model file likes: edges of numbers, wrong types, odd names.
const TOML_VALUES: [&str; 20] = [
    "0",
    "-1",
    "1",
    "3",
    "65536",
    "4294967296",
    "18446744073709551616",
    "1e309",
    "nan",
    "-inf",
    "0.5",
    "1.5",
    "\"\"",
    "\"relu\"",
    "\"same\"",
    "true",
    "[]",
    "[0, 0, 0]",
    "\"constant(nan)\"",
    "\"random_uniform(1, 1)\"",
];
const TOML_KEYS: [&str; 19] = [
    "dense",
    "reshape",
    "batch_norm",
    "layer_norm",
    "momentum",
    "eps",
    "conv2d",
    "kernel",
    "stride",
    "max_pool",
    "flatten",
    "dropout",
    "activation",
    "inputs",
    "image",
    "lr",
    "optimizer",
    "loss",
    "kernel_init",
];

/// Line- and character-level edits of TOML text.
fn mutate_toml(rng: &mut StdRng, text: &str) -> String {
    let mut lines: Vec<String> = text.lines().map(String::from).collect();
    for _ in 0..rng.random_range(1..=3) {
        let i = rng.random_range(0..lines.len().max(1));
        match rng.random_range(0..6) {
            // A value replaced with an edge value.
            0 | 1 if i < lines.len() => {
                if let Some((key, _)) = lines[i].split_once('=') {
                    let v = TOML_VALUES[rng.random_range(0..TOML_VALUES.len())];
                    lines[i] = format!("{key}= {v}");
                }
            }
            // A known key with an edge value, anywhere.
            2 => {
                let k = TOML_KEYS[rng.random_range(0..TOML_KEYS.len())];
                let v = TOML_VALUES[rng.random_range(0..TOML_VALUES.len())];
                lines.insert(i.min(lines.len()), format!("{k} = {v}"));
            }
            3 if i < lines.len() => {
                lines.remove(i);
            }
            4 if i < lines.len() => {
                let copy = lines[i].clone();
                lines.insert(i, copy);
            }
            _ if i < lines.len() && !lines[i].is_empty() => {
                let mut bytes = lines[i].clone().into_bytes();
                let j = rng.random_range(0..bytes.len());
                bytes[j] = b"0123456789.-=[]\"#, e"[rng.random_range(0..17)];
                lines[i] = String::from_utf8_lossy(&bytes).into_owned();
            }
            _ => {}
        }
    }
    lines.join("\n")
}

/// Whether building `s` allocates little: every layer's weights bounded by in x out values.
fn small(s: &Sequential) -> bool {
    let Ok(shapes) = s.shapes() else { return false };
    let mut prev: usize = s.input;
    for shape in shapes {
        let here = shape.iter().product::<usize>();
        if prev.saturating_mul(here) > 1 << 20 {
            return false;
        }
        prev = here;
    }
    true
}

#[test]
fn model_files_mutated() {
    let cpu = Device::cpu();
    for text in MODEL_FILES {
        let file = ModelFile::parse(text).unwrap_or_else(|e| panic!("seed {text:?}: {e}"));
        file.to_sequential().unwrap().build(&cpu, 0).unwrap();
    }
    fuzz("model file", 7, |rng, i| {
        let text = mutate_toml(rng, MODEL_FILES[i % MODEL_FILES.len()]);
        let Ok(file) = ModelFile::parse(&text) else {
            return;
        };
        // What parse accepted, to_toml writes back in a form parse accepts.
        if let Err(e) = ModelFile::parse(&file.to_toml()) {
            panic!("round trip of {text:?} failed: {e}");
        }
        let _ = (file.loss(), file.optimizer(), file.metrics());
        if let Ok(s) = file.to_sequential() {
            if small(&s) {
                let _ = s.build(&cpu, 0);
            }
        }
    });
}

/// A private scratch directory, removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!("kiln-fuzz-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Byte edits aimed at a safetensors file: its header length, the digits of its JSON
/// header (offsets, shapes, the model's sizes), or anywhere.
fn mutate_safetensors(rng: &mut StdRng, v: &mut Vec<u8>) {
    let header = v
        .get(..8)
        .map_or(0, |b| u64::from_le_bytes(b.try_into().unwrap()) as usize);
    match rng.random_range(0..4) {
        0 if v.len() >= 8 => {
            let n = [0u64, 1, 7, header as u64 + 1, u64::MAX, 100_000_001][rng.random_range(0..6)];
            v[..8].copy_from_slice(&n.to_le_bytes());
        }
        1 | 2 => {
            let digits: Vec<usize> = (8..(8 + header).min(v.len()))
                .filter(|&i| v[i].is_ascii_digit())
                .collect();
            for _ in 0..rng.random_range(1..=2) {
                if let Some(&i) = digits.get(rng.random_range(0..digits.len().max(1))) {
                    v[i] = b"0123456789"[rng.random_range(0..10)];
                }
            }
        }
        _ => mutate(rng, v),
    }
}

/// A small trained-shape model on the CPU, saved as a weights file and a checkpoint directory.
fn checkpoint_seeds(dir: &Path) -> (Vec<u8>, Vec<u8>) {
    let cpu = Device::cpu();
    let model = Sequential::new(3)
        .dense(4)
        .relu()
        .dense(2)
        .build(&cpu, 1)
        .unwrap();
    let file = dir.join("seed.safetensors");
    io::save_model(&file, &model).unwrap();
    let trainer = model
        .compile(Loss::Mse, Optimizer::adam(0.01), &[])
        .unwrap();
    let ckpt = dir.join("seed-ckpt");
    io::save(&ckpt, &trainer).unwrap();
    (
        std::fs::read(&file).unwrap(),
        std::fs::read(ckpt.join("optimizer.safetensors")).unwrap(),
    )
}

#[test]
fn safetensors_weights_mutated() {
    let scratch = Scratch::new("weights");
    let (weights, _) = checkpoint_seeds(&scratch.0);
    let cpu = Device::cpu();
    let mut target = Sequential::new(3)
        .dense(4)
        .relu()
        .dense(2)
        .build(&cpu, 2)
        .unwrap();
    let path = scratch.0.join("case.safetensors");
    fuzz("safetensors weights", 8, |rng, _| {
        let mut v = weights.clone();
        mutate_safetensors(rng, &mut v);
        std::fs::write(&path, &v).unwrap();
        for r in [
            io::load_model(&path, &cpu).map(drop),
            io::load_weights_into(&mut target, &path),
        ] {
            if let Err(e) = r {
                assert!(matches!(e, Error::Format { .. }), "{e}");
            }
        }
    });
}

#[test]
fn checkpoint_directories_mutated() {
    let scratch = Scratch::new("ckpt");
    let (weights, optimizer) = checkpoint_seeds(&scratch.0);
    let cpu = Device::cpu();
    let dir = scratch.0.join("case");
    std::fs::create_dir_all(&dir).unwrap();
    fuzz("checkpoint directory", 9, |rng, i| {
        let (mut w, mut o) = (weights.clone(), optimizer.clone());
        match i % 3 {
            0 => mutate_safetensors(rng, &mut w),
            1 => mutate_safetensors(rng, &mut o),
            _ => {
                mutate_safetensors(rng, &mut w);
                mutate_safetensors(rng, &mut o);
            }
        }
        std::fs::write(dir.join("model.safetensors"), &w).unwrap();
        std::fs::write(dir.join("optimizer.safetensors"), &o).unwrap();
        if let Err(e) = io::load_trainer(&dir, &cpu) {
            assert!(matches!(e, Error::Format { .. }), "{e}");
        }
    });
}
