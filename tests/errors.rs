//! Bad input of every kind is a typed error whose message names the problem, never a panic.
//!
//! Each case asserts the exact variant and a few words of the message; the file-based
//! IDX and CSV cases of tests/data.rs are complemented here through the in-memory parsers.

mod common;

use flate2::write::GzEncoder;
use flate2::Compression;
use kiln::data::{csv, idx, Dataset, Scaling};
use kiln::nn::layer::Conv;
use kiln::nn::Init;
use kiln::train::{EarlyStopping, Validation};
use kiln::{Dense, Device, Error, FitOptions, Loss, Optimizer, Sequential, Tensor, Trainer};
use std::io::Write;

/// The variant's name; an exhaustive match, so a new variant must be named here.
fn variant(e: &Error) -> &'static str {
    match e {
        Error::NoAdapter { .. } => "NoAdapter",
        Error::DeviceRequest { .. } => "DeviceRequest",
        Error::BadEnv { .. } => "BadEnv",
        Error::Shape { .. } => "Shape",
        Error::DeviceMismatch { .. } => "DeviceMismatch",
        Error::OverLimit { .. } => "OverLimit",
        Error::InvalidArgument { .. } => "InvalidArgument",
        Error::Io { .. } => "Io",
        Error::Format { .. } => "Format",
        Error::Diverged { .. } => "Diverged",
        Error::Gpu(_) => "Gpu",
        Error::OutOfMemory { .. } => "OutOfMemory",
        Error::DeviceLost { .. } => "DeviceLost",
        Error::Graph(_) => "Graph",
        Error::Distributed { .. } => "Distributed",
        Error::RankMismatch { .. } => "RankMismatch",
        Error::Ensemble(_) => "Ensemble",
        Error::Tune(_) => "Tune",
    }
}

/// Asserts that `r` failed with `want` and that its message contains every word of `needles`.
#[track_caller]
fn fails<T>(r: kiln::Result<T>, want: &str, needles: &[&str]) -> Error {
    let e = match r {
        Err(e) => e,
        Ok(_) => panic!("expected Error::{want}, got Ok"),
    };
    let msg = e.to_string();
    assert_eq!(variant(&e), want, "wrong variant: {msg}");
    for n in needles {
        assert!(msg.contains(n), "message lacks {n:?}: {msg}");
    }
    e
}

fn devices() -> [Device; 2] {
    [Device::cpu(), common::gpu()]
}

fn classifier(device: &Device) -> Trainer {
    Sequential::new(4)
        .dense(8)
        .relu()
        .dense(3)
        .build(device, 0)
        .unwrap()
        .compile(
            Loss::SparseCategoricalCrossEntropy,
            Optimizer::sgd(0.1),
            &[],
        )
        .unwrap()
}

#[test]
fn layer_sizes_that_do_not_chain() {
    let d = Device::cpu();
    let spec = Sequential::new(4)
        .dense(8)
        .dense_with(Dense::with_inputs(7, 2));
    fails(
        spec.build(&d, 0),
        "Shape",
        &["layer 1 (dense)", "declared 7 inputs", "gives 8"],
    );
    fails(
        Sequential::new(4).dense(0).build(&d, 0),
        "InvalidArgument",
        &["layer 0 (dense) units", "at least 1"],
    );
    fails(
        Sequential::new(0).dense(2).build(&d, 0),
        "InvalidArgument",
        &["at least one input feature"],
    );
    fails(
        Sequential::new(4).dense(2).dropout(1.5).build(&d, 0),
        "InvalidArgument",
        &["layer 1 (dropout) rate", "1.5"],
    );
    // rand panics on an empty range: it must be refused before sampling.
    let bad_init = Dense::new(3).kernel_init(Init::Uniform(1.0, 1.0));
    fails(
        Sequential::new(2).dense_with(bad_init).build(&d, 0),
        "InvalidArgument",
        &["layer 0 (dense) kernel_init", "Uniform(1, 1)", "low < high"],
    );
    fails(
        Sequential::new(1 << 40).dense(1 << 40).build(&d, 0),
        "InvalidArgument",
        &["layer 0 (dense) units", "more weights than fit"],
    );
}

#[test]
fn image_models_that_do_not_fit() {
    let d = Device::cpu();
    fails(
        Sequential::new(4).conv2d(2, 3).build(&d, 0),
        "Shape",
        &[
            "layer 0 (conv2d)",
            "needs [channels, height, width] samples",
        ],
    );
    fails(
        Sequential::image(1 << 40, 1 << 40, 1)
            .flatten()
            .dense(2)
            .build(&d, 0),
        "InvalidArgument",
        &["Sequential input", "more values than fit in usize"],
    );
    let huge = Conv::new(1 << 62, 3);
    fails(
        Sequential::image(4, 8, 8)
            .add(kiln::Layer::Conv2d(huge))
            .build(&d, 0),
        "InvalidArgument",
        &["layer 0 (conv2d) filters", "more weights than fit"],
    );
    let bad_init = Conv {
        kernel_init: Init::Normal(0.0, -1.0),
        ..Conv::new(2, 3)
    };
    fails(
        Sequential::image(1, 8, 8)
            .add(kiln::Layer::Conv2d(bad_init))
            .build(&d, 0),
        "InvalidArgument",
        &["layer 0 (conv2d) kernel_init", "std >= 0"],
    );
    // The count that lets a loader refuse a file before building what it describes.
    for spec in [
        Sequential::new(5)
            .dense(7)
            .relu()
            .dense_with(Dense::new(3).no_bias()),
        Sequential::image(2, 8, 8)
            .conv2d(4, 3)
            .max_pool(2)
            .flatten()
            .dense(3),
    ] {
        let built = spec.build(&d, 0).unwrap().param_count();
        assert_eq!(spec.param_count().unwrap(), built, "{spec:?}");
    }
}

#[test]
fn checkpoints_whose_metadata_model_is_larger_than_their_weights() {
    let dir = std::env::temp_dir().join(format!("kiln-errors-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("lying.safetensors");
    let model = Sequential::new(3)
        .dense(4)
        .build(&Device::cpu(), 0)
        .unwrap();
    kiln::io::save_model(&path, &model).unwrap();
    // Rewrite the architecture in the header: 4 units become 40 million (480 MB of weights).
    let bytes = std::fs::read(&path).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let mut header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    let meta = &mut header["__metadata__"]["model"];
    *meta = meta
        .as_str()
        .unwrap()
        .replace("dense = 4", "dense = 40000000")
        .into();
    let text = serde_json::to_vec(&header).unwrap();
    let mut lying = (text.len() as u64).to_le_bytes().to_vec();
    lying.extend_from_slice(&text);
    lying.extend_from_slice(&bytes[8 + n..]);
    std::fs::write(&path, &lying).unwrap();
    fails(
        kiln::io::load_model(&path, &Device::cpu()),
        "Format",
        &[
            "lying.safetensors",
            "has 160000000 parameters",
            "holds only 16 values",
        ],
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn labels_outside_the_classes() {
    for device in devices() {
        let mut t = classifier(&device);
        let x = [0.5; 8];
        for (y, needle) in [
            ([0.0, 3.0], "row 1 has label 3"),
            ([-1.0, 0.0], "row 0 has label -1"),
            ([0.0, 1.5], "row 1 has label 1.5"),
        ] {
            fails(
                t.train_batch(&x, &y),
                "InvalidArgument",
                &["labels y", needle, "3 classes"],
            );
            fails(
                t.fit(&x, &y, FitOptions::default()),
                "InvalidArgument",
                &[needle],
            );
            fails(t.evaluate(&x, &y, 2), "InvalidArgument", &[needle]);
        }
    }
    let mut d = Dataset {
        x: vec![0.0; 4],
        y: vec![0.0, 2.0],
        n: 2,
        features: 2,
        classes: 2,
        image: None,
    };
    fails(
        d.one_hot(),
        "InvalidArgument",
        &["row 1 has label 2", "0..2"],
    );
    d.classes = 0;
    fails(d.one_hot(), "InvalidArgument", &["regression set"]);
}

#[test]
fn nan_and_inf_in_inputs_and_targets() {
    for device in devices() {
        let mut t = classifier(&device);
        let mut x = vec![0.5; 8];
        x[6] = f32::NAN;
        let y = [0.0, 1.0];
        let needles = ["input x", "row 1 column 2 is NaN"];
        fails(t.train_batch(&x, &y), "InvalidArgument", &needles);
        fails(
            t.fit(&x, &y, FitOptions::default()),
            "InvalidArgument",
            &needles,
        );
        fails(t.evaluate(&x, &y, 2), "InvalidArgument", &needles);
        fails(t.predict(&x, 2), "InvalidArgument", &needles);
        x[6] = f32::NEG_INFINITY;
        fails(
            t.predict(&x, 2),
            "InvalidArgument",
            &["row 1 column 2 is -inf"],
        );

        let mut r = Sequential::new(2)
            .dense(1)
            .build(&device, 0)
            .unwrap()
            .compile(Loss::Mse, Optimizer::sgd(0.1), &[])
            .unwrap();
        fails(
            r.train_batch(&[1.0, 2.0], &[f32::INFINITY]),
            "InvalidArgument",
            &["targets y", "inf"],
        );
    }
}

#[test]
fn batches_of_the_wrong_width() {
    for device in devices() {
        let mut t = classifier(&device);
        let needles = ["10 input values are not whole rows", "4 features"];
        fails(t.train_batch(&[0.0; 10], &[0.0, 1.0]), "Shape", &needles);
        fails(t.predict(&[0.0; 10], 2), "Shape", &needles);
        fails(t.model.forward(&[0.0; 10]), "Shape", &needles);
        fails(
            t.fit(&[0.0; 8], &[0.0], FitOptions::default()),
            "Shape",
            &["targets y", "2 rows need 2 target values", "got 1"],
        );
        fails(
            t.fit(
                &[0.0; 8],
                &[0.0, 1.0],
                FitOptions {
                    validation: Validation::Data {
                        x: vec![0.0; 3],
                        y: vec![0.0],
                    },
                    ..FitOptions::default()
                },
            ),
            "Shape",
            &["3 input values"],
        );
    }
}

#[test]
fn empty_data_sets() {
    for device in devices() {
        let mut t = classifier(&device);
        let needles = ["input x", "empty (0 rows)"];
        fails(
            t.fit(&[], &[], FitOptions::default()),
            "InvalidArgument",
            &needles,
        );
        fails(t.evaluate(&[], &[], 8), "InvalidArgument", &needles);
        fails(t.predict(&[], 8), "InvalidArgument", &needles);
        fails(t.train_batch(&[], &[]), "InvalidArgument", &needles);
    }
    let empty = Dataset {
        x: vec![],
        y: vec![],
        n: 0,
        features: 3,
        classes: 2,
        image: None,
    };
    fails(empty.validate(), "InvalidArgument", &["empty (0 rows)"]);
}

#[test]
fn bad_fit_options() {
    let mut t = classifier(&Device::cpu());
    let (x, y) = ([0.5; 8], [0.0, 1.0]);
    fails(
        t.fit(&x, &y, FitOptions::new(1, 0)),
        "InvalidArgument",
        &["batch_size", "at least 1"],
    );
    for split in [1.0, -0.5, f32::NAN] {
        let opts = FitOptions {
            validation: Validation::Split(split),
            ..FitOptions::default()
        };
        fails(
            t.fit(&x, &y, opts),
            "InvalidArgument",
            &["validation split", "[0, 1)"],
        );
    }
    let opts = FitOptions {
        validation: Validation::Split(0.6),
        ..FitOptions::new(1, 1)
    };
    fails(
        t.fit(&x[..4], &y[..1], opts),
        "InvalidArgument",
        &["leaves no training rows"],
    );
    let opts = FitOptions {
        early_stopping: Some(EarlyStopping::new("val_accuracy", 1)),
        ..FitOptions::default()
    };
    fails(
        t.fit(&x, &y, opts),
        "InvalidArgument",
        &["early stopping monitor", "'val_accuracy' is not reported"],
    );
}

fn numbered(n: usize) -> Dataset {
    Dataset {
        x: (0..2 * n).map(|i| i as f32).collect(),
        y: (0..n).map(|i| (i % 2) as f32).collect(),
        n,
        features: 2,
        classes: 2,
        image: None,
    }
}

#[test]
fn data_set_operations_that_used_to_panic() {
    let d = numbered(4);
    for f in [-0.1, 1.01, f32::NAN, f32::INFINITY] {
        fails(
            d.split(f, 0),
            "InvalidArgument",
            &["split fraction", "not within [0, 1]"],
        );
    }
    fails(
        d.batch(&[0, 4]),
        "InvalidArgument",
        &["row 4 is out of range", "4 rows"],
    );
    fails(
        d.select(&[usize::MAX]),
        "InvalidArgument",
        &["out of range"],
    );
    for div in [0.0, f32::NAN, f32::INFINITY] {
        let mut s = numbered(4);
        fails(
            s.scale(Scaling::Divide(div)),
            "InvalidArgument",
            &["Scaling::Divide", "finite and non-zero"],
        );
        assert_eq!(s, numbered(4), "unchanged after a failed scale");
    }
    // Public fields can disagree: every operation checks before indexing.
    let mut short = numbered(4);
    short.x.pop();
    fails(short.batch(&[3]), "Shape", &["x holds 7 values"]);
    fails(short.split(0.5, 0), "Shape", &["x holds 7 values"]);
    fails(short.scale(Scaling::MinMax), "Shape", &["x holds 7 values"]);
    let mut huge = numbered(1);
    huge.n = usize::MAX;
    fails(huge.batch(&[0]), "Shape", &["expected n * features"]);
    let mut img = numbered(1);
    img.image = Some((usize::MAX, 2, 2));
    fails(
        img.validate(),
        "Shape",
        &["image shape", "more than usize::MAX"],
    );
}

fn header(magic: [u8; 4], dims: &[u32]) -> Vec<u8> {
    let mut v = magic.to_vec();
    for d in dims {
        v.extend_from_slice(&d.to_be_bytes());
    }
    v
}

fn gz(bytes: &[u8]) -> Vec<u8> {
    let mut e = GzEncoder::new(Vec::new(), Compression::fast());
    e.write_all(bytes).unwrap();
    e.finish().unwrap()
}

const IMG: [u8; 4] = [0, 0, 8, 3];
const LAB: [u8; 4] = [0, 0, 8, 1];

#[test]
fn idx_files_that_lie_or_are_cut() {
    let mut truncated = header(IMG, &[2, 3, 3]);
    truncated.extend_from_slice(&[1; 10]);
    for bytes in [truncated.clone(), gz(&truncated)] {
        fails(
            idx::parse_images(&bytes, "cut"),
            "Format",
            &[
                "cut (IDX images file)",
                "truncated",
                "18 data bytes",
                "only 10",
            ],
        );
    }
    // Claims 4G x 4G x 4G pixels: the product overflows, nothing is allocated.
    let oversized = header(IMG, &[u32::MAX, u32::MAX, u32::MAX]);
    fails(
        idx::parse_images(&oversized, "huge"),
        "Format",
        &["overflow a byte count"],
    );
    // Claims 2^31 labels in 100 bytes.
    let mut claims = header(LAB, &[1 << 31]);
    claims.resize(100, 0);
    fails(
        idx::parse_labels(&gz(&claims), "claims"),
        "Format",
        &["truncated", "2147483648 data bytes", "only 92"],
    );
    fails(
        idx::parse_images(&header(IMG, &[2, 3])[..8], "short-header"),
        "Format",
        &["truncated header", "4 of 12 bytes"],
    );
    fails(
        idx::parse_labels(&[0, 0, 8], "magicless"),
        "Format",
        &["truncated", "3 bytes", "0x00000801"],
    );
    fails(
        idx::parse_images(&header(LAB, &[0]), "labels"),
        "Format",
        &["1 dimension(s), expected 3", "0x00000803"],
    );
    fails(
        idx::parse_labels(&header([0, 0, 8, 2], &[1, 1, 0]), "matrix"),
        "Format",
        &["2 dimension(s), expected 1"],
    );
    fails(
        idx::parse_labels(b"%PDF-1.7 not idx", "pdf"),
        "Format",
        &["wrong magic 0x25504446", "expected 0x00000801"],
    );
    fails(
        idx::parse_labels(&header([0, 0, 0x0d, 1], &[0]), "floats"),
        "Format",
        &["wrong magic 0x00000d01"],
    );
    let mut trailing = header(LAB, &[2]);
    trailing.extend_from_slice(&[1, 2, 3]);
    fails(
        idx::parse_labels(&trailing, "long"),
        "Format",
        &["trailing data after the 2 bytes"],
    );
    let packed = gz(&header(LAB, &[3]));
    fails(
        idx::parse_labels(&packed[..packed.len() - 6], "cut.gz"),
        "Format",
        &["corrupt gzip stream"],
    );
    fails(
        idx::parse_labels(&[0x1f, 0x8b, 8, 0, 1, 2, 3], "junk.gz"),
        "Format",
        &["corrupt gzip stream"],
    );
}

#[test]
fn csv_with_missing_columns_bad_cells_and_ragged_rows() {
    let parse = |text: &str| csv::parse(text, "t.csv", None, None);
    fails(
        csv::parse("a,b,y\n1,2,0\n", "t.csv", Some("label"), None),
        "Format",
        &["t.csv (CSV)", "no label column \"label\"", "a, b, y"],
    );
    fails(
        parse("a,b,y\n1,2,0\n1,0\n"),
        "Format",
        &["line 3 has 2 fields, expected 3"],
    );
    fails(
        parse("a,b,y\n1,2,0,7\n"),
        "Format",
        &["line 2 has 4 fields, expected 3"],
    );
    fails(
        parse("a,b,y\n1,2,0\n1,two,1\n"),
        "Format",
        &[
            "line 3",
            "column \"b\" (column 2)",
            "\"two\" is not a finite number",
        ],
    );
    fails(
        parse("a,b,y\n1e39,2,0\n"),
        "Format",
        &["\"1e39\" is not a finite number"],
    );
    fails(
        parse("a,b,y\n1,,0\n"),
        "Format",
        &["\"\" is not a finite number"],
    );
    fails(
        parse("a,b,y\n\"1,2,0\n"),
        "Format",
        &["line 2: unclosed quote in field 1"],
    );
    fails(
        parse("a,b,y\n\"1\"x,2,0\n"),
        "Format",
        &["'x' after the closing quote of field 1"],
    );
    fails(parse(""), "Format", &["empty: no header row"]);
    fails(parse("a,b,y\n"), "Format", &["header but no data rows"]);
    fails(parse("y\n1\n"), "Format", &["need at least one feature"]);
    fails(
        csv::parse("a,y\n1,0.5\n", "t.csv", None, Some(true)),
        "Format",
        &["label 0.5", "not a non-negative integer class id"],
    );
    fails(
        csv::parse("a,y,y\n1,0,0\n", "t.csv", Some("y"), None),
        "Format",
        &["label column \"y\" appears 2 times"],
    );
}

#[test]
fn tensors_over_the_adapters_limits() {
    let gpu = common::gpu();
    let limits = gpu.gpu_context().unwrap().limits().clone();
    let (binding, buffer) = (
        limits.max_storage_buffer_binding_size,
        limits.max_buffer_size,
    );
    let len = |bytes: u64| (bytes / 4 + 1) as usize;
    if binding < buffer {
        let n = len(binding);
        let size = (n as u64 * 4).div_ceil(16) * 16;
        fails(
            Tensor::zeros(&gpu, &[n]),
            "OverLimit",
            &[
                "max_storage_buffer_binding_size",
                &binding.to_string(),
                &size.to_string(),
            ],
        );
    }
    let n = len(buffer);
    fails(
        Tensor::zeros(&gpu, &[1, n]),
        "OverLimit",
        &["max_buffer_size", &buffer.to_string()],
    );
    // full() must refuse before building a host copy of 2^42 bytes.
    fails(
        Tensor::full(&gpu, &[1 << 20, 1 << 20], 1.0),
        "OverLimit",
        &["tensor needs 4398046511104 bytes"],
    );
    fails(
        Sequential::new(1 << 16).dense(1 << 16).build(&gpu, 0),
        "OverLimit",
        &["layer 0 (dense) weight [65536, 65536]", "17179869184 bytes"],
    );
    // On the CPU the host allocator is the limit: refused, not aborted.
    fails(
        Tensor::zeros(&Device::cpu(), &[1 << 60]),
        "OutOfMemory",
        &[
            "Tensor::uninit",
            "4611686018427387904 bytes",
            "host allocator",
        ],
    );
    fails(
        Sequential::new(1 << 30)
            .dense(1 << 31)
            .build(&Device::cpu(), 0),
        "OutOfMemory",
        &["initial weights"],
    );
}

#[test]
fn shape_products_that_overflow() {
    for device in devices() {
        let huge = [usize::MAX, 2];
        let needles = ["more elements than fit in usize", "18446744073709551615"];
        fails(Tensor::zeros(&device, &huge), "Shape", &needles);
        fails(Tensor::uninit(&device, &huge), "Shape", &needles);
        fails(Tensor::full(&device, &huge, 1.0), "Shape", &needles);
        fails(
            Tensor::from_slice(&device, &[1.0; 2], &[1 << 32, 1 << 32, 2]),
            "Shape",
            &["Tensor::from_slice", "more elements than fit"],
        );
        let t = Tensor::zeros(&device, &[2, 2]).unwrap();
        fails(t.reshape(&huge), "Shape", &["Tensor::reshape"]);
        let mut t = Tensor::zeros(&device, &[2, 2]).unwrap();
        fails(t.write(&[1.0; 3]), "Shape", &["holds 4 values, got 3"]);
    }
    let (mut c, g) = (
        Tensor::zeros(&Device::cpu(), &[2]).unwrap(),
        Tensor::zeros(&common::gpu(), &[2]).unwrap(),
    );
    fails(c.copy_from(&g), "DeviceMismatch", &["different devices"]);
}

#[test]
fn a_diverging_fit_stops_with_epoch_and_step() {
    for device in devices() {
        let mut t = Sequential::new(2)
            .dense(1)
            .build(&device, 0)
            .unwrap()
            .compile(Loss::Mse, Optimizer::sgd(1e6), &[])
            .unwrap();
        let x: Vec<f32> = (0..16).map(|i| 1000.0 + i as f32).collect();
        let y: Vec<f32> = (0..8).map(|i| 500.0 * i as f32).collect();
        let opts = FitOptions {
            loss_every: 1,
            shuffle: false,
            ..FitOptions::new(3, 1)
        };
        let e = fails(
            t.fit(&x, &y, opts),
            "Diverged",
            &["epoch 1", "lower the learning rate"],
        );
        let Error::Diverged { value, epoch, step } = e else {
            unreachable!("fails() checked the variant")
        };
        assert!(!value.is_finite(), "{value}");
        assert_eq!(epoch, 1);
        assert!((1..=8).contains(&step), "step {step}");
        let msg = Error::Diverged { value, epoch, step }.to_string();
        assert!(msg.contains(&format!("step {step};")), "{msg}");
        assert!(t.steps() >= step as u64);
    }
}
