//! A two-input model on the built-in 8x8 digits, seen through a poor scanner (uniform noise
//! added to every pixel): the image through a small conv branch, and a tabular side input
//! (a clerk's guess of the digit, one-hot, right 60% of the time, otherwise another digit
//! at random) through a dense branch, concatenated before the classifier. The same image
//! branch alone is trained beside it, so the side input's worth shows as the gap between
//! the two test accuracies.
//!
//! `cargo run --release --example two_input -- [EPOCHS]` (EPOCHS defaults to 15).
mod common;

use kiln::data::{self, Dataset, Scaling};
use kiln::nn::layer::Conv;
use kiln::{Activation, Dense, Device, Graph, Layer, Loss, Metric, Optimizer};

/// splitmix64, as uniforms in [0, 1).
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> f32 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        ((z ^ (z >> 31)) >> 40) as f32 / (1u64 << 24) as f32
    }
}

/// A poor scan: every pixel (scaled to [0, 1]) plus uniform noise in [-NOISE, NOISE].
const NOISE: f32 = 0.5;

/// Adds the scanner's noise to the images, and returns each row's side input: a one-hot
/// guess of the digit, right with probability 0.6, otherwise another digit at random.
fn degrade_and_hint(d: &mut Dataset, seed: u64) -> Vec<f32> {
    let mut rng = Rng(seed);
    for v in &mut d.x {
        *v += NOISE * (2.0 * rng.next() - 1.0);
    }
    let mut hints = vec![0.0; d.n * 10];
    for (row, &y) in d.y.iter().enumerate() {
        let guess = if rng.next() < 0.6 {
            y as usize
        } else {
            (y as usize + 1 + (rng.next() * 9.0) as usize) % 10 // any other digit
        };
        hints[row * 10 + guess] = 1.0;
    }
    hints
}

/// The image branch (conv, relu, flatten), with the side input's branch when `side`.
fn model(side: bool) -> Graph {
    let mut g = Graph::new();
    if side {
        g.input("hint", &[10])
            .layer("h1", Layer::Dense(Dense::new(16)), &["hint"])
            .layer("h2", Layer::Activation(Activation::Relu), &["h1"]);
    }
    g.input("img", &[1, 8, 8])
        .layer("c1", Layer::Conv2d(Conv::new(8, 3).same()), &["img"])
        .layer("r1", Layer::Activation(Activation::Relu), &["c1"])
        .layer("flat", Layer::Flatten, &["r1"]);
    let head_in = if side {
        g.concatenate("both", &["h2", "flat"]);
        "both"
    } else {
        "flat"
    };
    g.layer("logits", Layer::Dense(Dense::new(10)), &[head_in])
        .output("logits");
    g
}

fn main() -> kiln::Result<()> {
    let epochs = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(15);
    let (mut train, mut test) = data::digits()?.split(0.25, 7)?;
    train.scale(Scaling::Divide(16.0))?.apply(&mut test)?;
    let (hint_train, hint_test) = (
        degrade_and_hint(&mut train, 1),
        degrade_and_hint(&mut test, 2),
    );
    let device = Device::gpu()?;
    let mut accuracies = Vec::new();
    for side in [false, true] {
        let model = model(side).build(&device, 1)?;
        // Rows are packed in input declaration order: the hint's 10 values, then the image.
        let pack = |hint: &[f32], img: &[f32]| match side {
            true => model.pack_inputs(&[hint, img]),
            false => model.pack_inputs(&[img]),
        };
        let (x_train, x_test) = (pack(&hint_train, &train.x)?, pack(&hint_test, &test.x)?);
        let name = if side { "image + hint" } else { "image only" };
        println!("{name}: {} parameters", model.param_count());
        let mut t = model.compile(
            Loss::SparseCategoricalCrossEntropy,
            Optimizer::adam(1e-2),
            &[Metric::Accuracy],
        )?;
        let opts = common::printing(epochs, 32);
        t.fit(&x_train, &train.y, opts)?;
        let acc = t
            .evaluate(&x_test, &test.y, 128)?
            .get("accuracy")
            .unwrap_or(0.0);
        println!("{name} test accuracy {acc:.4}");
        accuracies.push((name, acc));
    }
    println!("test rows: {} (hint right for 60% of them)", test.n);
    for (name, acc) in accuracies {
        println!("{name:>12}: {acc:.4}");
    }
    Ok(())
}
