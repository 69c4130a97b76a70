//! Sampling text from a causal language model (`Trainer::generate`) and `kiln
//! generate`: one seed gives one text, top-k 1 is the greedy argmax computed here from
//! `predict` (through a sliding window), and bad arguments are typed errors.

mod common;

use kiln::nn::blocks::{gpt, GptConfig};
use kiln::train::Sampling;
use kiln::{Device, Error, Loss, Optimizer, Trainer};

const VOCAB: usize = 7;
const CONTEXT: usize = 5;

fn model(device: &Device) -> Trainer {
    let config = GptConfig {
        vocab: VOCAB,
        context: CONTEXT,
        width: 8,
        heads: 2,
        layers: 2,
        dropout: 0.0,
    };
    gpt(&config)
        .unwrap()
        .build(device, 5)
        .unwrap()
        .compile(
            Loss::SparseCategoricalCrossEntropy,
            Optimizer::adam(0.01),
            &[],
        )
        .unwrap()
}

/// The greedy continuation, one `predict` per token of the last `CONTEXT` ids padded
/// at the end, its argmax read at the last real position.
fn greedy(t: &mut Trainer, prompt: &[u32], length: usize) -> Vec<u32> {
    let mut ids = prompt.to_vec();
    for _ in 0..length {
        let window: Vec<u32> = ids.iter().rev().take(CONTEXT).rev().copied().collect();
        let mut x: Vec<f32> = window.iter().map(|&i| i as f32).collect();
        x.resize(CONTEXT, 0.0);
        let p = t.predict(&x, 1).unwrap();
        let row = &p[(window.len() - 1) * VOCAB..window.len() * VOCAB];
        let mut best = 0;
        for (i, v) in row.iter().enumerate() {
            if *v > row[best] {
                best = i;
            }
        }
        ids.push(best as u32);
    }
    ids[prompt.len()..].to_vec()
}

#[test]
fn seeded_sampling_repeats_and_top_one_is_greedy() {
    for device in [Device::cpu(), common::gpu()] {
        let mut t = model(&device);
        let prompt = [3, 1];
        let s = |seed| Sampling {
            temperature: 0.8,
            top_k: Some(4),
            seed,
        };
        let a = t.generate(&prompt, 12, &s(1)).unwrap();
        assert_eq!(a.len(), 12);
        assert!(a.iter().all(|&id| (id as usize) < VOCAB));
        assert_eq!(a, t.generate(&prompt, 12, &s(1)).unwrap(), "{device:?}");
        // Two other seeds: at least one differs (0.8 on an untrained model is near uniform).
        let b = t.generate(&prompt, 12, &s(2)).unwrap();
        let c = t.generate(&prompt, 12, &s(3)).unwrap();
        assert!(a != b || a != c, "seeds change the text");
        // 12 new tokens after 2 slide the 5-token window 9 times.
        let top1 = Sampling {
            temperature: 1.0,
            top_k: Some(1),
            seed: 9,
        };
        let want = greedy(&mut t, &prompt, 12);
        assert_eq!(
            t.generate(&prompt, 12, &top1).unwrap(),
            want,
            "{device:?} top-k 1"
        );
        let cold = Sampling {
            temperature: 1e-6,
            top_k: None,
            seed: 4,
        };
        assert_eq!(
            t.generate(&prompt, 12, &cold).unwrap(),
            want,
            "{device:?} cold"
        );
    }
}

#[test]
fn bad_sampling_arguments_are_typed_errors() {
    let mut t = model(&Device::cpu());
    let bad = |s: Sampling, prompt: &[u32], t: &mut Trainer| {
        let e = t.generate(prompt, 3, &s).unwrap_err();
        assert!(matches!(e, Error::InvalidArgument { .. }), "{e}");
    };
    let ok = Sampling::default();
    bad(
        Sampling {
            temperature: 0.0,
            ..ok
        },
        &[1],
        &mut t,
    );
    bad(
        Sampling {
            temperature: f32::NAN,
            ..ok
        },
        &[1],
        &mut t,
    );
    bad(
        Sampling {
            top_k: Some(0),
            ..ok
        },
        &[1],
        &mut t,
    );
    bad(ok, &[], &mut t);
    bad(ok, &[VOCAB as u32], &mut t);
}

#[test]
fn kiln_generate_continues_a_prompt_from_a_trained_gpt() {
    let kiln = env!("CARGO_BIN_EXE_kiln");
    let dir = common::temp_dir("generate", "cli");
    let text = dir.join("text.txt");
    std::fs::write(
        &text,
        "to be or not to be, that is the question. ".repeat(40),
    )
    .unwrap();
    let run = dir.join("run");
    let data = format!("text:{}", text.display());
    common::run_ok(
        kiln,
        &[
            "train",
            "--data",
            &data,
            "--context",
            "16",
            "--gpt",
            "1,2,16",
            "--epochs",
            "1",
            "--device",
            "cpu",
            "--out",
            run.to_str().unwrap(),
            "--seed",
            "1",
        ],
    );
    let generate = |extra: &[&str]| {
        let mut args = vec![
            "generate",
            "--checkpoint",
            run.to_str().unwrap(),
            "--device",
            "cpu",
        ];
        args.extend_from_slice(extra);
        std::process::Command::new(kiln)
            .args(&args)
            .output()
            .unwrap()
    };
    let args = [
        "--prompt", "to be", "--length", "40", "--top-k", "5", "--seed", "1",
    ];
    let first = generate(&args);
    assert!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    let out = String::from_utf8(first.stdout.clone()).unwrap();
    assert!(out.starts_with("to be"), "{out}");
    assert_eq!(out.trim_end_matches('\n').chars().count(), 5 + 40, "{out}");
    assert_eq!(generate(&args).stdout, first.stdout, "same seed, same text");
    // 40 characters after 5 slide the 16-character window: the cache, then whole windows.
    let whole = generate(&[&args[..], &["--no-cache"]].concat());
    assert_eq!(
        whole.stdout, first.stdout,
        "--no-cache gives the cached text"
    );
    for (bad, why) in [
        (&["--prompt", "xyz"][..], "not in the vocabulary"),
        (&["--temperature", "0"][..], "temperature"),
        (&["--top-k", "0"][..], "top-k"),
    ] {
        let o = generate(bad);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success() && err.contains(why), "{bad:?}: {err}");
    }
    let not_text = dir.join("not-text");
    std::fs::create_dir_all(&not_text).unwrap();
    let o = std::process::Command::new(kiln)
        .args(["generate", "--checkpoint", not_text.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&o.stderr).contains("not a text model"));
}
