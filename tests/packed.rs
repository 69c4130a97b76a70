//! Packed parameters (one GPU buffer each for the values, the gradients and every
//! optimizer state slot): the same training as tensors in buffers of their own.

mod common;

use kiln::{FitOptions, Loss, Metric, Optimizer, Sequential, Trainer};

fn trainer(optimizer: Optimizer, packed: bool) -> Trainer {
    trainer_on(&common::gpu(), optimizer, packed)
}

fn trainer_on(device: &kiln::Device, optimizer: Optimizer, packed: bool) -> Trainer {
    // Sizes that are no multiple of any alignment, so the views sit apart with padding.
    let mut model = Sequential::new(17)
        .dense(3)
        .relu()
        .dense_with(kiln::Dense::new(5).regularize(0.0, 0.01))
        .tanh()
        .dense(3)
        .build(device, 5)
        .unwrap();
    assert!(model.is_packed(), "GPU models are packed by default");
    if !packed {
        model.unpack().unwrap();
        assert!(!model.is_packed());
    }
    let loss = Loss::SparseCategoricalCrossEntropy;
    model.compile(loss, optimizer, &[Metric::Accuracy]).unwrap()
}

fn weights(t: &Trainer) -> Vec<Vec<u32>> {
    let values = t.model.params().iter().map(|p| p.value.to_vec().unwrap());
    values
        .map(|v| v.iter().map(|x| x.to_bits()).collect())
        .collect()
}

#[test]
fn packed_training_is_bit_identical_to_unpacked() {
    let x = common::random(40 * 17, 3);
    let y: Vec<f32> = (0..40).map(|i| (i % 3) as f32).collect();
    let optimizers = [
        Optimizer::adam(0.01).clip_norm(0.5),
        Optimizer::adamw(0.01, 0.1),
        Optimizer::sgd_momentum(0.05, 0.9, true),
        Optimizer::rmsprop(0.01),
    ];
    for opt in optimizers {
        let mut a = trainer(opt.clone(), true);
        let mut b = trainer(opt.clone(), false);
        a.fit(&x, &y, FitOptions::new(3, 7)).unwrap();
        b.fit(&x, &y, FitOptions::new(3, 7)).unwrap();
        assert_eq!(weights(&a), weights(&b), "{:?}", opt.rule);
        // Unpacking mid-run keeps the optimizer state: the runs stay together.
        a.model.unpack().unwrap();
        a.fit(&x, &y, FitOptions::new(1, 7)).unwrap();
        b.fit(&x, &y, FitOptions::new(1, 7)).unwrap();
        assert_eq!(weights(&a), weights(&b), "{:?} after unpacking", opt.rule);
    }
}

#[test]
fn packed_parameters_share_one_buffer_and_the_optimizer_one_dispatch() {
    let x = common::random(8 * 17, 4);
    let y: Vec<f32> = (0..8).map(|i| (i % 3) as f32).collect();
    let mut dispatches = Vec::new();
    common::isolate_autotune_cache();
    for packed in [true, false] {
        // A device of its own: the other tests' dispatches do not count in its stats.
        let device = kiln::Device::gpu().unwrap();
        let mut t = trainer_on(&device, Optimizer::adam(0.01), packed);
        let p = t.model.params();
        let shared = p.iter().all(|q| q.value.shares_buffer(&p[0].value));
        assert_eq!(shared, packed, "packed {packed}: values in one buffer");
        // Warm-up: the matmul autotuner times its candidates on the first steps.
        for _ in 0..3 {
            t.train_batch(&x, &y).unwrap();
        }
        let before = t.device().stats().dispatches;
        t.train_batch(&x, &y).unwrap();
        dispatches.push(t.device().stats().dispatches - before);
    }
    // Six parameter tensors: one optimizer dispatch packed; unpacked, one per as many
    // tensors as the adapter binds at once (four on Vulkan, fewer on GL).
    assert!(
        dispatches[0] < dispatches[1],
        "dispatches per step, packed and not: {dispatches:?}"
    );
}
