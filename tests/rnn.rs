//! The recurrent layers (`Layer::Lstm`, `Layer::Gru`): gradients through a model against
//! central differences of its loss, forward and gradients against an independent float64
//! reference of PyTorch's equations (tests/rnn_check.py, numpy), and an LSTM that learns.
//! The op's GPU kernels against its CPU reference are in tests/rnn_cell.rs.
mod common;
use common::*;
use kiln::data::Scaling;
use kiln::nn::layers::Recurrent;
use kiln::ops::rnn_cell::{Cell, Recurrence, RnnGrads, RnnWeights};
use kiln::{Device, FitOptions, Layer, Loss, Metric, Optimizer, Sequential, Tensor, Trainer};
use std::io::Write;
use std::process::{Command, Stdio};

/// Finite-difference step and tolerance of the model checks, as tests/model_grads.rs
/// argues them: f32 losses differenced over 2h = 6e-3 carry up to ~5e-5 of rounding.
const H: f32 = 3e-3;
const RTOL: f64 = 1e-3;
const ATOL: f64 = 1e-4;

/// Dense -> [steps, features] -> recurrent -> (flatten) -> Dense, a model whose every
/// parameter gradient passes through the recurrent layer's backward (the first Dense's
/// through its input gradient).
fn mid_graph(layer: Layer, steps: usize, features: usize, seq: bool) -> Sequential {
    let s = Sequential::new(6)
        .dense(steps * features)
        .reshape(&[steps, features])
        .add(layer);
    let s = if seq { s.flatten() } else { s };
    s.dense(2)
}

fn trainer(spec: &Sequential, device: &Device) -> Trainer {
    spec.build(device, 11)
        .unwrap()
        .compile(Loss::Mse, Optimizer::sgd(0.1), &[])
        .unwrap()
}

/// Every parameter's gradient against central differences of the reported loss.
fn check_model_grads(spec: &Sequential, device: &Device, x: &[f32], what: &str) {
    let y = random(x.len() / spec.input * 2, 22);
    let mut t = trainer(spec, device);
    let (_, named) = t.gradients(x, &y).unwrap();
    for (k, (name, grad)) in named.iter().enumerate() {
        let keep = t.model.params()[k].value.to_vec().unwrap();
        for (e, &g) in grad.iter().enumerate() {
            let mut at = |d: f32| {
                let mut v = keep.clone();
                v[e] += d;
                t.model.params_mut()[k].value.write(&v).unwrap();
                t.gradients(x, &y).unwrap().0 as f64
            };
            let fd = (at(H) - at(-H)) / (2.0 * H as f64);
            let err = (g as f64 - fd).abs();
            assert!(
                err <= ATOL + RTOL * fd.abs(),
                "{what} {name}[{e}]: analytic {g}, finite differences {fd}"
            );
        }
        t.model.params_mut()[k].value.write(&keep).unwrap();
    }
}

#[test]
fn gradients_match_finite_differences_mid_graph() {
    let layers = [
        Layer::Lstm(Recurrent::new(3)),
        Layer::Gru(Recurrent::new(3)),
        Layer::Lstm(Recurrent::new(2).sequences()),
        Layer::Gru(Recurrent::new(2).sequences()),
    ];
    for layer in layers {
        let seq = matches!(&layer, Layer::Lstm(r) | Layer::Gru(r) if r.return_sequences);
        let spec = mid_graph(layer.clone(), 3, 2, seq);
        for device in [Device::cpu(), gpu()] {
            let x = random(3 * 6, 21);
            check_model_grads(&spec, &device, &x, &format!("{layer:?} on {device:?}"));
        }
    }
}

#[test]
fn masked_gradients_match_finite_differences() {
    let [rows, steps, features] = [4, 5, 2];
    let mut x = random(rows * steps * features, 23);
    pad_steps(&mut x, [rows, steps, features], 0.0);
    for layer in [
        Layer::Lstm(Recurrent::new(3).masking(0.0)),
        Layer::Gru(Recurrent::new(3).masking(0.0).sequences()),
    ] {
        let seq = matches!(&layer, Layer::Gru(_));
        let s = Sequential::new(steps * features)
            .reshape(&[steps, features])
            .add(layer.clone());
        let spec = if seq { s.flatten() } else { s }.dense(2);
        for device in [Device::cpu(), gpu()] {
            check_model_grads(&spec, &device, &x, &format!("{layer:?} on {device:?}"));
        }
    }
}

#[test]
fn parameters_have_pytorch_names_and_shapes() {
    let spec = mid_graph(Layer::Gru(Recurrent::new(5)), 4, 3, false);
    let t = trainer(&spec, &Device::cpu());
    let params: Vec<(String, Vec<usize>)> = t
        .model
        .params()
        .iter()
        .map(|p| (p.name.clone(), p.value.shape().to_vec()))
        .collect();
    let want = [
        ("2.weight_ih_l0", vec![15, 3]),
        ("2.weight_hh_l0", vec![15, 5]),
        ("2.bias_ih_l0", vec![15]),
        ("2.bias_hh_l0", vec![15]),
    ];
    for (name, shape) in want {
        assert!(
            params.contains(&(name.to_string(), shape.clone())),
            "{name} {shape:?} in {params:?}"
        );
    }
    let k = 1.0 / 5f32.sqrt();
    for p in t.model.params().iter().filter(|p| p.name.starts_with("2.")) {
        let v = p.value.to_vec().unwrap();
        assert!(v.iter().all(|w| w.abs() <= k), "{} in +-1/sqrt(5)", p.name);
    }
}

/// Fixed, deterministic values that are neither symmetric nor small.
fn fixed(n: usize, phase: f32) -> Vec<f32> {
    (0..n)
        .map(|i| 0.9 * (i as f32 * 0.731 + phase).sin())
        .collect()
}

/// The reference's outputs for `cell` on these values: y, dx, dw_ih, dw_hh, db_ih, db_hh.
fn reference(op: Recurrence, dims: [usize; 4], values: &[&[f32]]) -> Vec<Vec<f32>> {
    let [b, t, d, h] = dims;
    let mut input = format!(
        "{}\n{b} {t} {d} {h} {}{}\n",
        if op.cell == Cell::Lstm { "lstm" } else { "gru" },
        u8::from(op.return_sequences),
        op.mask_value.map(|m| format!(" {m:e}")).unwrap_or_default()
    );
    for v in values {
        let line: Vec<String> = v.iter().map(|x| format!("{x:e}")).collect();
        input.push_str(&line.join(" "));
        input.push('\n');
    }
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/rnn_check.py");
    let mut child = Command::new("python3")
        .arg(script)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3 runs (the reference needs python3 with numpy)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "rnn_check.py failed (it needs numpy):\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| l.split_whitespace().map(|v| v.parse().unwrap()).collect())
        .collect()
}

/// kiln's y and gradients (the reference's order) for these values on `device`.
fn kiln_pass(
    op: Recurrence,
    dims: [usize; 4],
    device: &Device,
    values: &[&[f32]],
) -> Vec<Vec<f32>> {
    let [b, t, d, h] = dims;
    let g = op.cell.gates() * h;
    let up = |v: &[f32], s: &[usize]| Tensor::from_slice(device, v, s).unwrap();
    let x = up(values[0], &[b, t, d]);
    let (w_ih, w_hh) = (up(values[1], &[g, d]), up(values[2], &[g, h]));
    let (b_ih, b_hh) = (up(values[3], &[g]), up(values[4], &[g]));
    let y_shape = if op.return_sequences {
        vec![b, t, h]
    } else {
        vec![b, h]
    };
    let dy = up(values[5], &y_shape);
    let mut y = Tensor::zeros(device, &y_shape).unwrap();
    let mut work = op.work(device, b, t, d, h).unwrap();
    let w = RnnWeights {
        w_ih: &w_ih,
        b_ih: &b_ih,
        w_hh: &w_hh,
        b_hh: &b_hh,
    };
    op.forward_into(&x, w, &mut work, &mut y).unwrap();
    let zeros = |s: &[usize]| Tensor::zeros(device, s).unwrap();
    let mut gr = [zeros(&[g, d]), zeros(&[g, h]), zeros(&[g]), zeros(&[g])];
    let mut dx = zeros(&[b, t, d]);
    let [gw_ih, gw_hh, gb_ih, gb_hh] = &mut gr;
    let grads = RnnGrads {
        w_ih: gw_ih,
        b_ih: gb_ih,
        w_hh: gw_hh,
        b_hh: gb_hh,
    };
    op.backward_into(&x, &dy, w, &mut work, grads, Some(&mut dx))
        .unwrap();
    std::iter::once(&y)
        .chain(std::iter::once(&dx))
        .chain(gr.iter())
        .map(|t| t.to_vec().unwrap())
        .collect()
}

#[test]
fn forward_and_gradients_match_pytorch_equations() {
    let names = [
        "y",
        "dx",
        "dweight_ih_l0",
        "dweight_hh_l0",
        "dbias_ih_l0",
        "dbias_hh_l0",
    ];
    let options = [
        (false, None),
        (true, None),
        (false, Some(0.0)),
        (true, Some(0.0)),
    ];
    for cell in [Cell::Lstm, Cell::Gru] {
        for (seq, mask_value) in options {
            let dims @ [b, t, d, h] = [3, 5, 3, 4];
            let g = cell.gates() * h;
            let ys = if seq { b * t * h } else { b * h };
            let mut x = fixed(b * t * d, 0.1);
            if let Some(m) = mask_value {
                pad_steps(&mut x, [b, t, d], m);
            }
            let v = [
                x,
                fixed(g * d, 1.3),
                fixed(g * h, 2.9),
                fixed(g, 0.7),
                fixed(g, 4.1),
                fixed(ys, 5.3),
            ];
            let values: Vec<&[f32]> = v.iter().map(|v| v.as_slice()).collect();
            let op = Recurrence {
                cell,
                return_sequences: seq,
                mask_value,
            };
            let want = reference(op, dims, &values);
            for device in [Device::cpu(), gpu()] {
                let got = kiln_pass(op, dims, &device, &values);
                for ((got, want), name) in got.iter().zip(&want).zip(names) {
                    let what = format!("{op:?} {name} on {device:?}");
                    assert_close(got, want, 1e-4, 1e-5, &what);
                }
            }
        }
    }
}

#[test]
fn lstm_reads_digits_row_by_row() {
    let data = kiln::data::digits().unwrap();
    let (mut train, mut test) = data.split(0.2, 7).unwrap();
    let scaler = train.scale(Scaling::Divide(16.0)).unwrap();
    scaler.apply(&mut test).unwrap();
    let spec = Sequential::new(64).reshape(&[8, 8]).lstm(32).dense(10);
    let mut t = spec
        .build(&gpu(), 3)
        .unwrap()
        .compile(
            Loss::SparseCategoricalCrossEntropy,
            Optimizer::adam(1e-2),
            &[Metric::Accuracy],
        )
        .unwrap();
    t.fit(&train.x, &train.y, FitOptions::new(12, 32)).unwrap();
    let eval = t.evaluate(&test.x, &test.y, 256).unwrap();
    let acc = eval.get("accuracy").unwrap();
    println!("LSTM on digits rows: held-out accuracy {acc:.4}");
    assert!(acc >= 0.9, "held-out accuracy {acc}");
}

#[test]
fn options_round_trip_through_a_model_file() {
    use kiln::io::ModelFile;
    let layer = Layer::Gru(Recurrent::new(3).masking(-1.0).sequences());
    let file = ModelFile {
        input: 8,
        layers: vec![layer.def().entry()],
        ..ModelFile::default()
    };
    let text = file.to_toml();
    assert!(text.contains("gru = 3"), "{text}");
    assert!(text.contains("mask_value = -1"), "{text}");
    let back = ModelFile::parse(&text).unwrap();
    assert_eq!(back.to_sequential().unwrap().layers, vec![layer], "{text}");
}
