//! Multi-head attention: the fused GPU kernels (forward, and the backward that recomputes
//! the probabilities) and the plain materialising path against the CPU reference on
//! awkward shapes; the layer's gradients against central differences in the middle of a
//! graph (a dense layer before and after, self- and cross-attention); and its forward and
//! gradients against tests/attention_check.py, a float64 numpy reference written from
//! PyTorch's formulas (F.multi_head_attention_forward).
mod common;
use common::*;
use kiln::nn::graph::inputs::pack;
use kiln::nn::layers::MultiHeadAttention;
use kiln::ops::attention::Attention;
use kiln::{
    Dense, Device, Error, Graph, GraphError, Layer, Loss, Optimizer, Sequential, Tensor, Trainer,
};
use serde_json::{json, Value};
use std::process::{Command, Stdio};

/// (batch, T, S, D, heads, causal, cross): T and S of 1, 3, 17 and 64; head widths 1, 8,
/// 32 (and 3, 24 / 3 = 8); 1, 3 and 4 heads; causal or not; S below, equal to and above T.
const CASES: &[(usize, usize, usize, usize, usize, bool, bool)] = &[
    (2, 1, 1, 8, 1, false, false),
    (3, 3, 3, 3, 3, true, false),
    (2, 17, 17, 96, 3, true, false),
    (1, 17, 17, 4, 4, false, false),
    (2, 64, 64, 128, 4, true, false),
    (2, 64, 64, 32, 4, false, false),
    (1, 3, 3, 32, 1, false, false),
    (2, 17, 5, 32, 4, false, true),
    (1, 3, 17, 8, 1, true, true),
    (2, 1, 3, 24, 3, false, true),
    (1, 64, 17, 32, 4, true, true),
];

fn attention(case: (usize, usize, usize, usize, usize, bool, bool)) -> Attention {
    let (batch, queries, keys, width, heads, causal, _) = case;
    Attention {
        batch,
        queries,
        keys,
        width,
        heads,
        causal,
    }
}

/// o, lse, delta, dq (dq holds dK and dV too for self-attention), dkv.
fn run(device: &Device, a: &Attention, cross: bool, seed: u64) -> [Vec<f32>; 5] {
    let (bt, bs, d) = (a.batch * a.queries, a.batch * a.keys, a.width);
    let stats = a.batch * a.heads * a.queries;
    let q = Tensor::from_slice(device, &random(bt * 3 * d, seed), &[bt, 3 * d]).unwrap();
    let kv = Tensor::from_slice(device, &random(bs * 3 * d, seed + 1), &[bs, 3 * d]).unwrap();
    let g = Tensor::from_slice(device, &random(bt * d, seed + 2), &[bt, d]).unwrap();
    let kv = if cross { &kv } else { &q };
    // NaN where the op must write: a value it leaves out shows.
    let nan = |shape: &[usize]| Tensor::full(device, shape, f32::NAN).unwrap();
    let (mut o, mut lse, mut delta) = (nan(&[bt, d]), nan(&[stats]), nan(&[stats]));
    a.forward_into(&q, kv, &mut o, &mut lse).unwrap();
    // Cross-attention leaves the other projections' columns alone: zeros there.
    let (mut dq, mut dkv) = if cross {
        let zeros = |rows| Tensor::zeros(device, &[rows, 3 * d]).unwrap();
        (zeros(bt), zeros(bs))
    } else {
        (nan(&[bt, 3 * d]), nan(&[1]))
    };
    let dkv_out = cross.then_some(&mut dkv);
    a.backward_into(&q, kv, &o, &lse, &g, &mut delta, &mut dq, dkv_out)
        .unwrap();
    [&o, &lse, &delta, &dq, &dkv].map(|t| t.to_vec().unwrap())
}

/// The GPU in f32 against the CPU's f64 sums rounded to f32, over at most 64 keys of head
/// widths up to 32: measured at most 9.5e-7 absolute and 8.1e-6 relative (where |value|
/// > 0.01) over these cases; 1e-4 relative plus 2e-5 absolute leaves a tenfold margin.
#[test]
fn fused_kernels_match_the_cpu_reference() {
    for (k, &case) in CASES.iter().enumerate() {
        let a = attention(case);
        let cross = case.6;
        let cpu = run(&Device::cpu(), &a, cross, 10 * k as u64);
        let gpu = run(&gpu(), &a, cross, 10 * k as u64);
        let names = ["o", "lse", "delta", "dq", "dkv"];
        for ((g, c), name) in gpu.iter().zip(&cpu).zip(names) {
            assert_close(g, c, 1e-4, 2e-5, &format!("{name} of {a:?}"));
        }
    }
}

/// The plain path (scores and probabilities stored, the softmax op between) gives the
/// fused forward's output, on the GPU and the CPU.
#[test]
fn unfused_path_matches_the_fused_one() {
    for &case in &[CASES[2], CASES[5], CASES[7]] {
        let a = attention(case);
        for device in [Device::cpu(), gpu()] {
            let (bt, bs, d) = (a.batch * a.queries, a.batch * a.keys, a.width);
            let rows = a.batch * a.heads * a.queries;
            let q = Tensor::from_slice(&device, &random(bt * 3 * d, 3), &[bt, 3 * d]).unwrap();
            let kv = Tensor::from_slice(&device, &random(bs * 3 * d, 4), &[bs, 3 * d]).unwrap();
            let kv = if case.6 { &kv } else { &q };
            let mut o = Tensor::zeros(&device, &[bt, d]).unwrap();
            let mut lse = Tensor::zeros(&device, &[rows]).unwrap();
            a.forward_into(&q, kv, &mut o, &mut lse).unwrap();
            let mut scores = Tensor::zeros(&device, &[rows, a.keys]).unwrap();
            let mut probs = Tensor::zeros(&device, &[rows, a.keys]).unwrap();
            let mut plain = Tensor::zeros(&device, &[bt, d]).unwrap();
            a.forward_unfused_into(&q, kv, &mut scores, &mut probs, &mut plain)
                .unwrap();
            let (got, want) = (plain.to_vec().unwrap(), o.to_vec().unwrap());
            assert_close(
                &got,
                &want,
                1e-4,
                2e-5,
                &format!("unfused {a:?} on {device:?}"),
            );
        }
    }
}

#[test]
fn bad_sizes_are_typed_errors() {
    let cpu = Device::cpu();
    let a = Attention {
        batch: 1,
        queries: 2,
        keys: 2,
        width: 6,
        heads: 4,
        causal: false,
    };
    let q = Tensor::zeros(&cpu, &[2, 18]).unwrap();
    let mut o = Tensor::zeros(&cpu, &[2, 6]).unwrap();
    let mut lse = Tensor::zeros(&cpu, &[8]).unwrap();
    let err = a.forward_into(&q, &q, &mut o, &mut lse).unwrap_err();
    assert!(matches!(err, Error::InvalidArgument { .. }), "{err}");
    let a = Attention { heads: 3, ..a };
    let err = a.forward_into(&q, &q, &mut o, &mut lse).unwrap_err();
    assert!(
        matches!(err, Error::Shape { .. }),
        "lse of 8 for 6 rows: {err}"
    );
    // The layer: a width the heads do not split, and samples that are not [T, D].
    let seq = Sequential::new(12).reshape(&[2, 6]).attention(4);
    assert!(seq.shapes().is_err());
    assert!(Sequential::new(12).attention(2).shapes().is_err());
    assert_eq!(
        Sequential::new(12)
            .reshape(&[2, 6])
            .attention(3)
            .shapes()
            .unwrap()[1],
        vec![2, 6]
    );
}

/// Sizes of the mid-graph checks: T, S, D, heads.
const T: usize = 3;
const S: usize = 4;
const D: usize = 4;
const ROWS: usize = 3;

/// x [T*D] -> dense -> [T, D] -> attention (with m [S*D] -> dense -> [S, D] as keys) ->
/// [T*D] -> dense 2.
fn mid_graph(attn: MultiHeadAttention, cross: bool) -> Graph {
    let mut g = Graph::new();
    g.input("x", &[T * D]);
    if cross {
        g.input("m", &[S * D]);
    }
    g.layer("pre", Layer::Dense(Dense::new(T * D)), &["x"])
        .layer("seq", Layer::Reshape(vec![T, D]), &["pre"]);
    let mut inputs = vec!["seq"];
    if cross {
        g.layer("mpre", Layer::Dense(Dense::new(S * D)), &["m"])
            .layer("mseq", Layer::Reshape(vec![S, D]), &["mpre"]);
        inputs.push("mseq");
    }
    g.layer("attn", Layer::MultiHeadAttention(attn), &inputs)
        .layer("flat", Layer::Reshape(vec![T * D]), &["attn"])
        .layer("post", Layer::Dense(Dense::new(2)), &["flat"])
        .output("post");
    g
}

fn trainer(g: &Graph, device: &Device) -> Trainer {
    g.build(device, 7)
        .unwrap()
        .compile(Loss::Mse, Optimizer::sgd(0.1), &[])
        .unwrap()
}

/// Every parameter's gradient (the four of the attention, and the dense layers' on both
/// sides, which see dL/d(input) of the attention) against central differences of the
/// trainer's own loss, on both devices.
#[test]
fn gradients_match_finite_differences_mid_graph() {
    let x = random(ROWS * T * D, 11);
    let m = random(ROWS * S * D, 12);
    let y = random(ROWS * 2, 13);
    let both = pack(&[&x, &m], &[T * D, S * D]).unwrap();
    for (attn, cross) in [
        (MultiHeadAttention::new(2), false),
        (MultiHeadAttention::new(2).causal(), false),
        (MultiHeadAttention::new(4), true),
        (MultiHeadAttention::new(1).causal(), true),
    ] {
        let g = mid_graph(attn, cross);
        for device in [Device::cpu(), gpu()] {
            let mut t = trainer(&g, &device);
            let names: Vec<&str> = t.model.params().iter().map(|p| p.name.as_str()).collect();
            for field in [
                "in_proj_weight",
                "in_proj_bias",
                "out_proj.weight",
                "out_proj.bias",
            ] {
                assert!(names.contains(&&*format!("attn.{field}")), "{names:?}");
            }
            let input = if cross { &both } else { &x };
            assert_trainer_fd(&mut t, input, &y, 1e-3, &format!("{attn:?} cross {cross}"));
        }
    }
}

/// A cross-attention graph saved as a model file and checkpoint loads back as the same
/// graph (the layer's entry: heads and `causal`) with the same weights under PyTorch's
/// names; a third input is a typed error naming the node.
#[test]
fn a_saved_attention_graph_loads_back_and_arity_is_checked() {
    let g = mid_graph(MultiHeadAttention::new(2).causal(), true);
    let model = g.build(&Device::cpu(), 3).unwrap();
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("attention-save");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    kiln::io::save_model(&dir, &model).unwrap();
    let back = kiln::io::load_model(&dir, &Device::cpu()).unwrap();
    assert_eq!(back.graph(), Some(&g));
    for (a, b) in model.params().iter().zip(back.params()) {
        assert_eq!(
            (&a.name, a.value.to_vec().unwrap()),
            (&b.name, b.value.to_vec().unwrap())
        );
    }
    assert!(back.param("attn.out_proj.weight").is_some());
    // The summary's row: 3D * D + 3D + D * D + D parameters.
    let summary = model.summary();
    let row = summary
        .lines()
        .find(|l| l.starts_with("attn (multi_head_attention)"))
        .unwrap_or_else(|| panic!("{summary}"));
    assert!(row.contains(&format!(" {} ", 4 * D * D + 4 * D)), "{row}");

    let mut g = Graph::new();
    g.input("x", &[T * D])
        .layer("seq", Layer::Reshape(vec![T, D]), &["x"])
        .layer(
            "attn",
            Layer::MultiHeadAttention(MultiHeadAttention::new(2)),
            &["seq", "seq", "seq"],
        )
        .output("attn");
    match g.build(&Device::cpu(), 0) {
        Err(Error::Graph(GraphError::Arity { node, .. })) => assert_eq!(node, "attn"),
        Err(other) => panic!("expected an arity error, got {other}"),
        Ok(_) => panic!("a third input to attention built"),
    }
}

/// Runs tests/attention_check.py on `args`.
fn numpy_reference(args: &Value) -> Option<Value> {
    let check = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/attention_check.py");
    let child = Command::new("python3")
        .arg(check)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let Ok(mut child) = child else {
        cannot_run("attention numpy reference", "python3 does not run");
        return None;
    };
    let text = args.to_string();
    std::io::Write::write_all(child.stdin.as_mut().unwrap(), text.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr).to_string();
        if err.contains("No module named 'numpy'") {
            cannot_run("attention numpy reference", "python3 has no numpy");
            return None;
        }
        panic!("attention_check.py failed:\n{err}");
    }
    Some(serde_json::from_slice(&out.stdout).unwrap())
}

fn floats(v: &Value) -> Vec<f32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect()
}

/// The attention alone (inputs straight in, flattened out) with fixed weights and inputs:
/// its output and its four gradients against the float64 reference within 1e-4 relative
/// (2e-6 absolute for values near zero; the f32 sums here are over at most 24 terms).
#[test]
fn forward_and_gradients_match_the_pytorch_formulas() {
    let (batch, t, s, d) = (2, 5, 3, 8);
    for (attn, cross) in [
        (MultiHeadAttention::new(2).causal(), false),
        (MultiHeadAttention::new(4), true),
    ] {
        let s = if cross { s } else { t };
        let mut g = Graph::new();
        g.input("x", &[t * d]);
        let mut inputs = vec!["xs"];
        if cross {
            g.input("m", &[s * d]);
            g.layer("ms", Layer::Reshape(vec![s, d]), &["m"]);
            inputs.push("ms");
        }
        g.layer("xs", Layer::Reshape(vec![t, d]), &["x"])
            .layer("attn", Layer::MultiHeadAttention(attn), &inputs)
            .layer("flat", Layer::Reshape(vec![t * d]), &["attn"])
            .output("flat");
        let x = random(batch * t * d, 21);
        let m = random(batch * s * d, 22);
        let target = random(batch * t * d, 23);
        let weights = [
            random(3 * d * d, 24),
            random(3 * d, 25).iter().map(|v| 0.5 * v).collect(),
            random(d * d, 26),
            random(d, 27),
        ];
        let args = json!({
            "batch": batch, "t": t, "s": s, "d": d, "heads": attn.heads, "causal": attn.causal,
            "x": x, "m": if cross { json!(m) } else { Value::Null },
            "in_proj_weight": weights[0], "in_proj_bias": weights[1],
            "out_proj_weight": weights[2], "out_proj_bias": weights[3], "target": target,
        });
        let Some(reference) = numpy_reference(&args) else {
            return;
        };
        let input = if cross {
            pack(&[&x, &m], &[t * d, s * d]).unwrap()
        } else {
            x.clone()
        };
        let names = [
            "in_proj_weight",
            "in_proj_bias",
            "out_proj.weight",
            "out_proj.bias",
        ];
        for device in [Device::cpu(), gpu()] {
            let mut tr = trainer(&g, &device);
            for (name, w) in names.iter().zip(&weights) {
                let i = tr.model.param_index(&format!("attn.{name}")).unwrap();
                tr.model.params_mut()[i].value.write(w).unwrap();
            }
            let what = format!("{attn:?} cross {cross} on {device:?}");
            let y = tr.predict(&input, batch).unwrap();
            assert_close(
                &y,
                &floats(&reference["y"]),
                1e-4,
                2e-6,
                &format!("y of {what}"),
            );
            let (loss, grads) = tr.gradients(&input, &target).unwrap();
            let want = reference["loss"].as_f64().unwrap() as f32;
            assert_close(&[loss], &[want], 1e-4, 0.0, &format!("loss of {what}"));
            for name in names {
                let (_, got) = grads
                    .iter()
                    .find(|(n, _)| n == &format!("attn.{name}"))
                    .unwrap();
                let want = floats(&reference["grads"][name]);
                assert_close(got, &want, 1e-4, 2e-6, &format!("{name} of {what}"));
            }
        }
    }
}
