//! BatchNorm and LayerNorm as model layers: CPU and GPU training agree, gradients match
//! f64 finite differences, running statistics follow PyTorch's update and drive
//! inference, checkpoints and model files carry them, and awkward shapes give typed errors.
mod common;
use common::*;
use kiln::io::{self, ModelFile};
use kiln::ops::batch_norm::BatchNorm;
use kiln::ops::layer_norm::LayerNorm;
use kiln::{Device, Error, FitOptions, Loss, Model, Optimizer, Sequential, Trainer};
use std::path::PathBuf;

const EPS: f64 = 1e-5;

/// A fresh, empty directory private to one test.
fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("kiln-norm-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Class ids 0..classes for `rows` rows.
fn labels(rows: usize, classes: usize) -> Vec<f32> {
    (0..rows).map(|i| ((i * 7 + 3) % classes) as f32).collect()
}

fn trainer(spec: &Sequential, device: &Device, opt: Optimizer) -> Trainer {
    spec.build(device, 5)
        .unwrap()
        .compile(Loss::SparseCategoricalCrossEntropy, opt, &[])
        .unwrap()
}

/// Every weight and buffer of a model, named.
fn state(model: &Model) -> Vec<(String, Vec<f32>)> {
    let params = model.params().iter().map(|p| (p.name.clone(), &p.value));
    params
        .chain(model.buffers())
        .map(|(n, t)| (n, t.to_vec().unwrap()))
        .collect()
}

/// Trains `spec` on the CPU and the GPU for a few steps and compares every tensor.
fn cpu_and_gpu_agree(spec: Sequential, width: usize, rows: usize, what: &str) {
    let x = random(rows * width, 11);
    let y = labels(rows, 3);
    // Not Adam: a bias just before batch norm has a zero gradient, whose rounding noise
    // Adam would blow up to full steps of random sign on each device.
    let opt = Optimizer::sgd_momentum(0.1, 0.9, false);
    let mut cpu = trainer(&spec, &Device::cpu(), opt.clone());
    let mut gpu = trainer(&spec, &gpu(), opt);
    for step in 0..4 {
        let lo = (step % 2) * rows / 2;
        let (xs, ys) = (&x[lo * width..], &y[lo..]);
        cpu.train_batch(xs, ys).unwrap();
        gpu.train_batch(xs, ys).unwrap();
    }
    let (c, g) = (state(&cpu.model), state(&gpu.model));
    assert_eq!(c.len(), g.len());
    for ((name, cv), (_, gv)) in c.iter().zip(&g) {
        assert_close(gv, cv, 1e-3, 1e-4, &format!("{what} {name}"));
    }
    let pc = cpu.predict(&x, rows).unwrap();
    let pg = gpu.predict(&x, rows).unwrap();
    assert_close(&pg, &pc, 1e-3, 1e-4, &format!("{what} predictions"));
}

#[test]
fn batch_norm_1d_trains_the_same_on_cpu_and_gpu() {
    let spec = Sequential::new(17).dense(8).batch_norm().relu().dense(3);
    cpu_and_gpu_agree(spec, 17, 12, "bn1d");
}

#[test]
fn batch_norm_2d_trains_the_same_on_cpu_and_gpu() {
    // First stage a batch norm (its input gradient is computed, then unused) and one after a conv.
    let spec = Sequential::image(3, 5, 5)
        .batch_norm()
        .conv2d(4, 3)
        .batch_norm()
        .relu()
        .flatten()
        .dense(3);
    cpu_and_gpu_agree(spec, 75, 6, "bn2d");
}

#[test]
fn layer_norm_trains_the_same_on_cpu_and_gpu() {
    let spec = Sequential::new(17)
        .layer_norm()
        .dense(9)
        .layer_norm()
        .tanh()
        .dense(3);
    cpu_and_gpu_agree(spec, 17, 10, "layer norm");
}

// ------------------------------------------------------------ finite differences

/// The layers of the f64 reference model.
enum Ref {
    Dense {
        inputs: usize,
        units: usize,
    },
    /// Batch statistics per channel of [n, c, hw].
    BatchNorm {
        c: usize,
        hw: usize,
    },
    /// Per row of `d` features.
    LayerNorm {
        d: usize,
    },
    Tanh,
}

/// Mean sparse cross-entropy of the reference model in f64, with `params` in the
/// model's order (weight then bias per layer).
fn ref_loss(layers: &[Ref], params: &[Vec<f64>], x: &[f64], y: &[f32], rows: usize) -> f64 {
    let mut a = x.to_vec();
    let mut p = 0;
    for layer in layers {
        a = match *layer {
            Ref::Dense { inputs, units } => {
                let (w, b) = (&params[p], &params[p + 1]);
                p += 2;
                let mut out = vec![0.0; rows * units];
                for r in 0..rows {
                    for u in 0..units {
                        let dot: f64 = (0..inputs)
                            .map(|i| a[r * inputs + i] * w[u * inputs + i])
                            .sum();
                        out[r * units + u] = dot + b[u];
                    }
                }
                out
            }
            Ref::BatchNorm { c, hw } => {
                let (g, b) = (&params[p], &params[p + 1]);
                p += 2;
                let count = (rows * hw) as f64;
                let ch = |i: usize| (i / hw) % c;
                let mut mean = vec![0.0; c];
                a.iter()
                    .enumerate()
                    .for_each(|(i, v)| mean[ch(i)] += v / count);
                let mut var = vec![0.0; c];
                a.iter()
                    .enumerate()
                    .for_each(|(i, v)| var[ch(i)] += (v - mean[ch(i)]).powi(2) / count);
                a.iter()
                    .enumerate()
                    .map(|(i, v)| {
                        let k = ch(i);
                        g[k] * (v - mean[k]) / (var[k] + EPS).sqrt() + b[k]
                    })
                    .collect()
            }
            Ref::LayerNorm { d } => {
                let (g, b) = (&params[p], &params[p + 1]);
                p += 2;
                a.chunks(d)
                    .flat_map(|row| {
                        let m = row.iter().sum::<f64>() / d as f64;
                        let var = row.iter().map(|v| (v - m).powi(2)).sum::<f64>() / d as f64;
                        let s = 1.0 / (var + EPS).sqrt();
                        (0..d).map(move |j| g[j] * (row[j] - m) * s + b[j])
                    })
                    .collect()
            }
            Ref::Tanh => a.iter().map(|v| v.tanh()).collect(),
        };
    }
    let classes = a.len() / rows;
    let total: f64 = a
        .chunks(classes)
        .zip(y)
        .map(|(z, &label)| {
            let max = z.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let lse = max + z.iter().map(|v| (v - max).exp()).sum::<f64>().ln();
            lse - z[label as usize]
        })
        .sum();
    total / rows as f64
}

/// Compares the CPU model's gradients with central differences of the f64 reference.
fn gradients_match(spec: Sequential, layers: &[Ref], width: usize, rows: usize) {
    let x = random(rows * width, 21);
    let y = labels(rows, 3);
    let mut t = trainer(&spec, &Device::cpu(), Optimizer::sgd(0.1));
    let before = state(&t.model);
    let (loss, grads) = t.gradients(&x, &y).unwrap();
    // Gradients take batch statistics but leave the running ones alone.
    assert_eq!(state(&t.model), before, "gradients() changed the model");
    let params = params_f64(&t.model);
    let xd: Vec<f64> = x.iter().map(|&v| v as f64).collect();
    let base = ref_loss(layers, &params, &xd, &y, rows);
    assert!(
        (base - loss as f64).abs() < 1e-5,
        "loss {loss} vs f64 {base}"
    );
    assert_grads_match_fd(&grads, &params, |p| ref_loss(layers, p, &xd, &y, rows));
}

#[test]
fn batch_norm_1d_gradients_match_finite_differences() {
    let spec = Sequential::new(5).dense(4).batch_norm().tanh().dense(3);
    let layers = [
        Ref::Dense {
            inputs: 5,
            units: 4,
        },
        Ref::BatchNorm { c: 4, hw: 1 },
        Ref::Tanh,
        Ref::Dense {
            inputs: 4,
            units: 3,
        },
    ];
    gradients_match(spec, &layers, 5, 6);
}

#[test]
fn batch_norm_2d_gradients_match_finite_differences() {
    let spec = Sequential::image(3, 5, 5).batch_norm().flatten().dense(3);
    let layers = [
        Ref::BatchNorm { c: 3, hw: 25 },
        Ref::Dense {
            inputs: 75,
            units: 3,
        },
    ];
    gradients_match(spec, &layers, 75, 2);
}

#[test]
fn layer_norm_gradients_match_finite_differences() {
    let spec = Sequential::new(7)
        .layer_norm()
        .dense(4)
        .layer_norm()
        .tanh()
        .dense(3);
    let layers = [
        Ref::LayerNorm { d: 7 },
        Ref::Dense {
            inputs: 7,
            units: 4,
        },
        Ref::LayerNorm { d: 4 },
        Ref::Tanh,
        Ref::Dense {
            inputs: 4,
            units: 3,
        },
    ];
    gradients_match(spec, &layers, 7, 3);
}

// ------------------------------------------------------------ running statistics

/// PyTorch's update of running mean and unbiased variance from batches of [n, c, hw].
fn running_reference(batches: &[&[f32]], c: usize, hw: usize, m: f64) -> (Vec<f32>, Vec<f32>) {
    let (mut rm, mut rv) = (vec![0.0f64; c], vec![1.0f64; c]);
    for batch in batches {
        let count = (batch.len() / c) as f64;
        let ch = |i: usize| (i / hw) % c;
        let mut mean = vec![0.0; c];
        batch
            .iter()
            .enumerate()
            .for_each(|(i, &v)| mean[ch(i)] += v as f64 / count);
        let mut ss = vec![0.0; c];
        batch
            .iter()
            .enumerate()
            .for_each(|(i, &v)| ss[ch(i)] += (v as f64 - mean[ch(i)]).powi(2));
        for k in 0..c {
            rm[k] = (1.0 - m) * rm[k] + m * mean[k];
            rv[k] = (1.0 - m) * rv[k] + m * ss[k] / (count - 1.0);
        }
    }
    let f = |v: Vec<f64>| v.into_iter().map(|v| v as f32).collect();
    (f(rm), f(rv))
}

/// Trains a model whose first layer is batch norm and checks its running statistics.
fn running_stats_follow_batches(spec: Sequential, c: usize, hw: usize, momentum: f64) {
    let (rows, width) = (8, c * hw);
    let x: Vec<f32> = random(3 * rows * width, 31)
        .iter()
        .map(|v| 2.0 * v + 0.5)
        .collect();
    let y = labels(rows, 3);
    let batches: Vec<&[f32]> = x.chunks(rows * width).collect();
    let (want_mean, want_var) = running_reference(&batches, c, hw, momentum);
    for device in [Device::cpu(), gpu()] {
        let mut t = trainer(&spec, &device, Optimizer::sgd(0.1));
        for batch in &batches {
            t.train_batch(batch, &y).unwrap();
        }
        let mean = t.model.buffer("0.running_mean").unwrap().to_vec().unwrap();
        let var = t.model.buffer("0.running_var").unwrap().to_vec().unwrap();
        assert_close(&mean, &want_mean, 1e-4, 1e-5, &format!("{device:?} mean"));
        assert_close(&var, &want_var, 1e-4, 1e-5, &format!("{device:?} var"));
        // Buffers are not parameters: the optimizer never sees them.
        assert!(t.model.params().iter().all(|p| !p.name.contains("running")));
    }
}

#[test]
fn running_statistics_follow_pytorch_update_1d() {
    let spec = Sequential::new(17).batch_norm().dense(3);
    running_stats_follow_batches(spec, 17, 1, 0.1);
}

#[test]
fn running_statistics_follow_pytorch_update_2d_with_momentum() {
    let bn = BatchNorm {
        eps: 1e-3,
        momentum: 0.3,
    };
    let spec = Sequential::image(3, 5, 5)
        .batch_norm_with(bn)
        .flatten()
        .dense(3);
    running_stats_follow_batches(spec, 3, 25, 0.3);
}

#[test]
fn evaluate_and_predict_use_running_statistics() {
    let (rows, f) = (6, 5);
    let x: Vec<f32> = random(rows * f, 41).iter().map(|v| 3.0 * v + 1.0).collect();
    let target = vec![0.0; rows * f];
    let spec = Sequential::new(f).batch_norm();
    for device in [Device::cpu(), gpu()] {
        let mut t = spec
            .build(&device, 1)
            .unwrap()
            .compile(Loss::Mse, Optimizer::sgd(0.0), &[])
            .unwrap();
        t.train_batch(&x, &target).unwrap();
        let rm = t.model.buffer("0.running_mean").unwrap().to_vec().unwrap();
        let rv = t.model.buffer("0.running_var").unwrap().to_vec().unwrap();
        // gamma 1 and beta 0 (an SGD step of rate 0 keeps them).
        let want: Vec<f32> = x
            .iter()
            .enumerate()
            .map(|(i, &v)| (v - rm[i % f]) / (rv[i % f] + EPS as f32).sqrt())
            .collect();
        let got = t.predict(&x, rows).unwrap();
        assert_close(&got, &want, 1e-4, 1e-5, &format!("{device:?} predict"));
        // With batch statistics each column would have mean 0: running ones do not.
        let col_mean = got.iter().step_by(f).sum::<f32>() / rows as f32;
        assert!(col_mean.abs() > 0.1, "predict used batch statistics");
        let mse = want.iter().map(|v| (v * v) as f64).sum::<f64>() / want.len() as f64;
        let e = t.evaluate(&x, &target, 4).unwrap();
        assert!(
            (e.loss - mse).abs() < 1e-4 * mse,
            "{device:?}: {} vs {mse}",
            e.loss
        );
        // The running statistics stay put under evaluation and prediction.
        assert_eq!(
            t.model.buffer("0.running_mean").unwrap().to_vec().unwrap(),
            rm
        );
    }
}

#[test]
fn early_stopping_restores_running_statistics_with_the_weights() {
    let spec = Sequential::new(6).batch_norm().dense(3);
    let (x, y) = (random(8 * 6, 45), labels(8, 3));
    let opts = |epochs| FitOptions {
        shuffle: false,
        ..FitOptions::new(epochs, 4)
    };
    let mut one = trainer(&spec, &Device::cpu(), Optimizer::sgd(0.1));
    one.fit(&x, &y, opts(1)).unwrap();
    // Only the first epoch counts as an improvement: its weights and statistics come back.
    let mut stopped = trainer(&spec, &Device::cpu(), Optimizer::sgd(0.1));
    let es = kiln::EarlyStopping {
        min_delta: 1e9,
        restore_best: true,
        ..kiln::EarlyStopping::new("loss", 1)
    };
    let history = stopped
        .fit(
            &x,
            &y,
            FitOptions {
                early_stopping: Some(es),
                ..opts(3)
            },
        )
        .unwrap();
    assert_eq!(history.restored_epoch, Some(1));
    assert_eq!(state(&stopped.model), state(&one.model));
}

// ------------------------------------------------------------ files

#[test]
fn checkpoint_round_trip_keeps_running_statistics_and_optimizer_state() {
    let spec = Sequential::new(6).dense(5).batch_norm().relu().dense(3);
    let (rows, x) = (8, random(8 * 6, 51));
    let y = labels(rows, 3);
    let mut t = trainer(&spec, &Device::cpu(), Optimizer::adam(0.01));
    t.fit(&x, &y, FitOptions::new(2, 4)).unwrap();
    let dir = temp_dir("checkpoint");
    io::save(&dir, &t).unwrap();
    let loaded = io::load_trainer(&dir, &Device::cpu()).unwrap();
    assert_eq!(state(&loaded.model), state(&t.model));
    let names: Vec<String> = loaded.model.buffers().into_iter().map(|(n, _)| n).collect();
    assert_eq!(names, ["1.running_mean", "1.running_var"]);
    // Running statistics moved away from their start (0 and 1), so the check means something.
    assert!(state(&t.model)
        .iter()
        .any(|(n, v)| n == "1.running_mean" && v.iter().any(|&m| m != 0.0)));
    // Buffers have no optimizer state, and do not stop the weights' state being saved.
    assert!(loaded.model.params().iter().all(|p| p.state.len() == 2));
    let mut t = t;
    let mut loaded = loaded;
    assert_eq!(
        loaded.predict(&x, rows).unwrap(),
        t.predict(&x, rows).unwrap()
    );
    // The weights-only file carries the buffers too, under PyTorch's names.
    let file = dir.join("weights.safetensors");
    io::save_model(&file, &t.model).unwrap();
    let model = io::load_model(&file, &gpu()).unwrap();
    assert_eq!(state(&model), state(&t.model));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn pytorch_state_dict_with_num_batches_tracked_loads() {
    let spec = Sequential::new(6).dense(5).batch_norm().dense(3);
    let mut t = trainer(&spec, &Device::cpu(), Optimizer::sgd(0.1));
    t.train_batch(&random(4 * 6, 52), &labels(4, 3)).unwrap();
    let dir = temp_dir("torch");
    let file = dir.join("kiln.safetensors");
    io::save_model(&file, &t.model).unwrap();
    // Add the int64 scalar PyTorch's BatchNorm1d keeps, as its state_dict would hold it.
    let bytes = std::fs::read(&file).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let count = 1i64.to_le_bytes();
    let tracked =
        safetensors::tensor::TensorView::new(safetensors::Dtype::I64, vec![], &count).unwrap();
    let mut tensors = st.tensors();
    tensors.push(("1.num_batches_tracked".to_string(), tracked));
    let torch = dir.join("torch.safetensors");
    safetensors::serialize_to_file(tensors, None, &torch).unwrap();
    let mut model = spec.build(&Device::cpu(), 9).unwrap();
    io::load_weights_into(&mut model, &torch).unwrap();
    assert_eq!(state(&model), state(&t.model));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn model_file_describes_norm_layers() {
    let text = r#"
input = 17

[[layers]]
dense = 8

[[layers]]
batch_norm = true
momentum = 0.01
activation = "relu"

[[layers]]
layer_norm = true
eps = 0.001

[[layers]]
dense = 3
"#;
    let spec = ModelFile::parse(text).unwrap().to_sequential().unwrap();
    let want = Sequential::new(17)
        .dense(8)
        .batch_norm_with(BatchNorm {
            eps: 1e-5,
            momentum: 0.01,
        })
        .relu()
        .layer_norm_with(LayerNorm { eps: 1e-3 })
        .dense(3);
    assert_eq!(spec, want);
    // Written back and read again, the model is the same.
    let again = ModelFile::parse(&ModelFile::from_sequential(&spec).to_toml()).unwrap();
    assert_eq!(again.to_sequential().unwrap(), spec);
    let image = "image = [3, 5, 5]\n[[layers]]\nbatch_norm = true\n[[layers]]\nflatten = true\n";
    let spec = ModelFile::parse(image).unwrap().to_sequential().unwrap();
    assert_eq!(spec, Sequential::image(3, 5, 5).batch_norm().flatten());

    let bad = [
        ("layer_norm = true\nmomentum = 0.1", "momentum"),
        ("batch_norm = true\nmomentum = 1.5", "momentum"),
        ("batch_norm = true\neps = -1.0", "eps"),
        ("batch_norm = true\ndense = 4", "batch_norm"),
        ("batch_norm = true\nlayer_norm = true", "batch_norm"),
        ("dense = 4\neps = 0.1", "eps"),
    ];
    for (layer, key) in bad {
        let text = format!("input = 4\n[[layers]]\n{layer}\n");
        match ModelFile::parse(&text) {
            Err(Error::Format { detail, .. }) => {
                assert!(detail.contains(key), "{layer}: {detail}")
            }
            other => panic!("{layer}: expected a format error, got {other:?}"),
        }
    }
}

#[test]
fn summary_counts_trainable_and_running_values() {
    let spec = Sequential::new(6)
        .dense(8)
        .batch_norm()
        .layer_norm()
        .dense(3);
    let model = spec.build(&Device::cpu(), 0).unwrap();
    let s = model.summary();
    assert!(
        s.contains("batch_normalization_0") && s.contains("layer_normalization_0"),
        "{s}"
    );
    // Dense 56 + 27, batch norm 16 trainable + 16 running, layer norm 16.
    assert_eq!(model.param_count(), 56 + 16 + 16 + 27);
    assert_eq!(model.buffer_count(), 16);
    assert_eq!(spec.param_count().unwrap(), model.param_count());
    assert_eq!(spec.buffer_count().unwrap(), 16);
    assert!(s.contains("Total params: 131"), "{s}");
    assert!(s.contains("Trainable params: 115"), "{s}");
    assert!(s.contains("Non-trainable params: 16"), "{s}");
    let row = s
        .lines()
        .find(|l| l.contains("batch_normalization_0"))
        .unwrap();
    assert!(row.trim_end().ends_with(" 32"), "{row}");
}

// ------------------------------------------------------------ awkward shapes

#[test]
fn layer_norm_handles_a_batch_of_one_row() {
    let spec = Sequential::new(17).layer_norm().dense(3);
    let x = random(17, 61);
    let mut out = Vec::new();
    for device in [Device::cpu(), gpu()] {
        let mut t = trainer(&spec, &device, Optimizer::sgd(0.1));
        t.train_batch(&x, &[1.0]).unwrap();
        out.push(t.predict(&x, 1).unwrap());
    }
    assert_close(&out[1], &out[0], 1e-4, 1e-5, "batch of one");
}

#[test]
fn batch_norm_1d_refuses_to_train_on_one_row_but_predicts_it() {
    let spec = Sequential::new(4).batch_norm().dense(2);
    for device in [Device::cpu(), gpu()] {
        let mut t = trainer(&spec, &device, Optimizer::sgd(0.1));
        let x = random(4, 71);
        match t.train_batch(&x, &[1.0]) {
            Err(Error::InvalidArgument { name, detail }) => {
                assert!(name.contains("layer 0"), "{name}: {detail}");
                assert!(detail.contains("at least 2"), "{detail}");
            }
            other => panic!("expected InvalidArgument, got {other:?}"),
        }
        assert!(matches!(
            t.gradients(&x, &[1.0]),
            Err(Error::InvalidArgument { .. })
        ));
        assert_eq!(t.predict(&x, 1).unwrap().len(), 2);
        // fit refuses up front a batch size that leaves a last batch of one row.
        let x = random(9 * 4, 72);
        let y = labels(9, 2);
        match t.fit(&x, &y, FitOptions::new(1, 4)) {
            Err(Error::InvalidArgument { name, detail }) => {
                assert_eq!(name, "batch_size", "{detail}")
            }
            other => panic!("expected InvalidArgument, got {other:?}"),
        }
        t.fit(&x, &y, FitOptions::new(1, 3)).unwrap();
    }
}

#[test]
fn batch_norm_2d_trains_on_one_image() {
    // One image still gives 25 values per channel.
    let spec = Sequential::image(3, 5, 5).batch_norm().flatten().dense(2);
    let x = random(75, 81);
    let mut t = trainer(&spec, &Device::cpu(), Optimizer::sgd(0.1));
    t.train_batch(&x, &[0.0]).unwrap();
}

#[test]
fn bad_norm_layers_are_typed_errors_at_build() {
    let cases = [
        Sequential::image(3, 5, 5).layer_norm(),
        Sequential::new(4).batch_norm_with(BatchNorm {
            eps: 1e-5,
            momentum: 2.0,
        }),
        Sequential::new(4).batch_norm_with(BatchNorm {
            eps: f32::NAN,
            momentum: 0.1,
        }),
        Sequential::new(4).layer_norm_with(LayerNorm { eps: -1.0 }),
    ];
    for spec in cases {
        let r = spec.build(&Device::cpu(), 0);
        assert!(
            matches!(r, Err(Error::InvalidArgument { .. } | Error::Shape { .. })),
            "{spec:?}: {:?}",
            r.err()
        );
    }
}
