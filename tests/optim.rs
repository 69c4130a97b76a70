mod common;
use common::*;
use kiln::ops::optim::{self, Rule};
use kiln::{Device, Tensor};

/// Sizes that hit one element, a partial workgroup, a 2-D shape and a multi-workgroup tail.
const SIZES: &[usize] = &[1, 17, 1000, 100003];
const STEPS: usize = 5;
/// GPU (f32 math) against CPU (f64 math), and CPU (f32 state) against the f64 reference.
const RTOL: f32 = 1e-5;
const ATOL: f32 = 1e-6;

fn shape_of(n: usize) -> Vec<usize> {
    if n == 1000 {
        vec![10, 100]
    } else {
        vec![n]
    }
}

/// PyTorch's documented algorithms, one scalar in f64 from start to end, written from
/// the torch.optim docs independently of kiln's code. Returns the final parameter and
/// the state in the order kiln documents for each rule.
fn reference(rule: &Rule, lr: f32, wd: f32, theta0: f32, grads: &[f32]) -> (f64, Vec<f64>) {
    let (lr, wd) = (lr as f64, wd as f64);
    let mut theta = theta0 as f64;
    match *rule {
        Rule::Sgd {
            momentum,
            dampening,
            nesterov,
        } => {
            let (mu, tau) = (momentum as f64, dampening as f64);
            let mut buf: Option<f64> = None;
            for &g in grads {
                let mut g = g as f64;
                if wd != 0.0 {
                    g += wd * theta;
                }
                if mu != 0.0 {
                    let b = match buf {
                        None => g,
                        Some(b) => mu * b + (1.0 - tau) * g,
                    };
                    buf = Some(b);
                    g = if nesterov { g + mu * b } else { b };
                }
                theta -= lr * g;
            }
            (theta, buf.into_iter().collect())
        }
        Rule::Adam {
            beta1,
            beta2,
            eps,
            amsgrad,
        } => adam_reference(lr, wd, false, beta1, beta2, eps, amsgrad, theta, grads),
        Rule::AdamW { beta1, beta2, eps } => {
            adam_reference(lr, wd, true, beta1, beta2, eps, false, theta, grads)
        }
        Rule::RmsProp {
            alpha,
            eps,
            momentum,
            centered,
        } => {
            let (alpha, eps, mu) = (alpha as f64, eps as f64, momentum as f64);
            let (mut v, mut b, mut g_ave) = (0.0f64, 0.0f64, 0.0f64);
            for &g in grads {
                let mut g = g as f64;
                if wd != 0.0 {
                    g += wd * theta;
                }
                v = alpha * v + (1.0 - alpha) * g * g;
                let mut v_tilde = v;
                if centered {
                    g_ave = alpha * g_ave + (1.0 - alpha) * g;
                    v_tilde -= g_ave * g_ave;
                }
                if mu > 0.0 {
                    b = mu * b + g / (v_tilde.sqrt() + eps);
                    theta -= lr * b;
                } else {
                    theta -= lr * g / (v_tilde.sqrt() + eps);
                }
            }
            let mut state = vec![v];
            if mu > 0.0 {
                state.push(b);
            }
            if centered {
                state.push(g_ave);
            }
            (theta, state)
        }
        Rule::Adagrad {
            eps,
            lr_decay,
            initial_accumulator,
        } => {
            let mut sum = initial_accumulator as f64;
            for (i, &g) in grads.iter().enumerate() {
                let t = (i + 1) as f64;
                let clr = lr / (1.0 + (t - 1.0) * lr_decay as f64);
                let mut g = g as f64;
                if wd != 0.0 {
                    g += wd * theta;
                }
                sum += g * g;
                theta -= clr * g / (sum.sqrt() + eps as f64);
            }
            (theta, vec![sum])
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn adam_reference(
    lr: f64,
    wd: f64,
    decoupled: bool,
    beta1: f32,
    beta2: f32,
    eps: f32,
    amsgrad: bool,
    mut theta: f64,
    grads: &[f32],
) -> (f64, Vec<f64>) {
    let (b1, b2, eps) = (beta1 as f64, beta2 as f64, eps as f64);
    let (mut m, mut v, mut v_max) = (0.0f64, 0.0f64, 0.0f64);
    for (i, &g) in grads.iter().enumerate() {
        let t = (i + 1) as i32;
        let mut g = g as f64;
        if decoupled {
            theta -= lr * wd * theta;
        } else if wd != 0.0 {
            g += wd * theta;
        }
        m = b1 * m + (1.0 - b1) * g;
        v = b2 * v + (1.0 - b2) * g * g;
        let m_hat = m / (1.0 - b1.powi(t));
        let v_hat = if amsgrad {
            v_max = v_max.max(v);
            v_max / (1.0 - b2.powi(t))
        } else {
            v / (1.0 - b2.powi(t))
        };
        theta -= lr * m_hat / (v_hat.sqrt() + eps);
    }
    let mut state = vec![m, v];
    if amsgrad {
        state.push(v_max);
    }
    (theta, state)
}

/// Runs `STEPS` steps of `rule` on both devices for every size and checks
/// GPU against CPU and CPU against the scalar reference, parameter and state.
fn check(name: &str, rule: Rule, lr: f32, wd: f32) {
    for (k, &n) in SIZES.iter().enumerate() {
        let shape = shape_of(n);
        let seed = 1000 * (k as u64 + 1);
        let theta0 = random(n, seed);
        let grads: Vec<Vec<f32>> = (0..STEPS).map(|s| random(n, seed + 1 + s as u64)).collect();
        let (mut pc, mut pg) = both(&theta0, &shape);
        let mut sc = rule.new_state(&pc).unwrap();
        // Garbage state on the GPU: the first step must initialise it, not read it.
        let mut sg: Vec<Tensor> = (0..rule.state_slots())
            .map(|_| Tensor::full(&gpu(), &shape, f32::NAN).unwrap())
            .collect();
        assert_eq!(sc.len(), rule.state_slots());
        for (s, g) in grads.iter().enumerate() {
            let t = s as u64 + 1;
            let (gc, gg) = both(g, &shape);
            optim::step(&rule, lr, wd, t, &mut pc, &gc, &mut sc).unwrap();
            optim::step(&rule, lr, wd, t, &mut pg, &gg, &mut sg).unwrap();
        }

        let mut want_p = Vec::with_capacity(n);
        let mut want_s = vec![Vec::with_capacity(n); rule.state_slots()];
        for i in 0..n {
            let g: Vec<f32> = grads.iter().map(|g| g[i]).collect();
            let (theta, state) = reference(&rule, lr, wd, theta0[i], &g);
            want_p.push(theta as f32);
            assert_eq!(
                state.len(),
                rule.state_slots(),
                "{name}: reference state slots"
            );
            for (w, s) in want_s.iter_mut().zip(state) {
                w.push(s as f32);
            }
        }
        let what = format!("{name} n={n}");
        let got_p = pc.to_vec().unwrap();
        // A rule that did nothing would pass the comparisons between devices.
        let moved = got_p
            .iter()
            .zip(&theta0)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f32::max);
        assert!(moved > 1e-3, "{what}: parameters barely moved ({moved})");
        assert_close(
            &got_p,
            &want_p,
            RTOL,
            ATOL,
            &format!("{what}: cpu param vs reference"),
        );
        for (j, (s, w)) in sc.iter().zip(&want_s).enumerate() {
            let got = s.to_vec().unwrap();
            assert_close(
                &got,
                w,
                RTOL,
                ATOL,
                &format!("{what}: cpu state {j} vs reference"),
            );
        }
        assert_same(&pg, &pc, RTOL, ATOL, &format!("{what}: gpu param vs cpu"));
        for (j, (g, c)) in sg.iter().zip(&sc).enumerate() {
            assert_same(g, c, RTOL, ATOL, &format!("{what}: gpu state {j} vs cpu"));
        }
    }
}

fn sgd(momentum: f32, dampening: f32, nesterov: bool) -> Rule {
    Rule::Sgd {
        momentum,
        dampening,
        nesterov,
    }
}

#[test]
fn sgd_plain() {
    let rule = sgd(0.0, 0.0, false);
    assert_eq!(rule.state_slots(), 0);
    check("sgd", rule, 0.1, 0.0);
}

#[test]
fn sgd_momentum_with_dampening() {
    let rule = sgd(0.9, 0.1, false);
    assert_eq!(rule.state_slots(), 1);
    check("sgd momentum", rule, 0.1, 0.0);
}

#[test]
fn sgd_nesterov() {
    check("sgd nesterov", sgd(0.9, 0.0, true), 0.1, 0.0);
}

#[test]
fn sgd_weight_decay() {
    check("sgd wd", sgd(0.0, 0.0, false), 0.1, 0.05);
    check("sgd momentum wd", sgd(0.8, 0.0, false), 0.1, 0.05);
}

fn adam(amsgrad: bool) -> Rule {
    Rule::Adam {
        beta1: 0.9,
        beta2: 0.999,
        eps: 1e-8,
        amsgrad,
    }
}

#[test]
fn adam_plain_and_l2() {
    assert_eq!(adam(false).state_slots(), 2);
    check("adam", adam(false), 0.01, 0.0);
    check("adam wd", adam(false), 0.01, 0.1);
}

#[test]
fn adam_amsgrad() {
    assert_eq!(adam(true).state_slots(), 3);
    check("adam amsgrad", adam(true), 0.01, 0.1);
}

#[test]
fn adamw() {
    let rule = Rule::AdamW {
        beta1: 0.8,
        beta2: 0.99,
        eps: 1e-6,
    };
    assert_eq!(rule.state_slots(), 2);
    check("adamw", rule, 0.01, 0.1);
}

#[test]
fn rmsprop_plain() {
    let rule = Rule::RmsProp {
        alpha: 0.99,
        eps: 1e-8,
        momentum: 0.0,
        centered: false,
    };
    assert_eq!(rule.state_slots(), 1);
    check("rmsprop", rule, 0.01, 0.0);
}

#[test]
fn rmsprop_centered_momentum() {
    let rule = Rule::RmsProp {
        alpha: 0.9,
        eps: 1e-8,
        momentum: 0.9,
        centered: true,
    };
    assert_eq!(rule.state_slots(), 3);
    check("rmsprop centered momentum", rule, 0.01, 0.01);
}

#[test]
fn rmsprop_centered_or_momentum_alone() {
    let centered = Rule::RmsProp {
        alpha: 0.9,
        eps: 1e-8,
        momentum: 0.0,
        centered: true,
    };
    let momentum = Rule::RmsProp {
        alpha: 0.9,
        eps: 1e-8,
        momentum: 0.5,
        centered: false,
    };
    assert_eq!(centered.state_slots(), 2);
    assert_eq!(momentum.state_slots(), 2);
    check("rmsprop centered", centered, 0.01, 0.0);
    check("rmsprop momentum", momentum, 0.01, 0.0);
}

#[test]
fn adagrad_lr_decay() {
    let rule = Rule::Adagrad {
        eps: 1e-10,
        lr_decay: 0.1,
        initial_accumulator: 0.1,
    };
    assert_eq!(rule.state_slots(), 1);
    check("adagrad", rule, 0.1, 0.01);
}

#[test]
fn bad_arguments_are_errors() {
    let rule = adam(false);
    for dev in [Device::cpu(), gpu()] {
        let mut p = Tensor::zeros(&dev, &[2, 3]).unwrap();
        let g = Tensor::zeros(&dev, &[2, 3]).unwrap();
        let g_wrong = Tensor::zeros(&dev, &[3, 2]).unwrap();
        let mut state = rule.new_state(&p).unwrap();
        let r = optim::step(&rule, 0.1, 0.0, 1, &mut p, &g_wrong, &mut state);
        assert!(
            matches!(r, Err(kiln::Error::Shape { .. })),
            "grad shape: {r:?}"
        );
        let mut bad_state = vec![
            Tensor::zeros(&dev, &[2, 3]).unwrap(),
            Tensor::zeros(&dev, &[6]).unwrap(),
        ];
        let r = optim::step(&rule, 0.1, 0.0, 1, &mut p, &g, &mut bad_state);
        assert!(
            matches!(r, Err(kiln::Error::Shape { .. })),
            "state shape: {r:?}"
        );
        let r = optim::step(&rule, 0.1, 0.0, 1, &mut p, &g, &mut state[..1]);
        assert!(
            matches!(r, Err(kiln::Error::InvalidArgument { .. })),
            "state count: {r:?}"
        );
        let r = optim::step(&rule, 0.1, 0.0, 0, &mut p, &g, &mut state);
        assert!(
            matches!(r, Err(kiln::Error::InvalidArgument { .. })),
            "t = 0: {r:?}"
        );
        let r = optim::step(&rule, f32::NAN, 0.0, 1, &mut p, &g, &mut state);
        assert!(
            matches!(r, Err(kiln::Error::InvalidArgument { .. })),
            "lr NaN: {r:?}"
        );
        let nesterov = sgd(0.9, 0.5, true);
        let mut one = nesterov.new_state(&p).unwrap();
        let r = optim::step(&nesterov, 0.1, 0.0, 1, &mut p, &g, &mut one);
        assert!(
            matches!(r, Err(kiln::Error::InvalidArgument { .. })),
            "nesterov: {r:?}"
        );
        optim::step(&rule, 0.1, 0.0, 1, &mut p, &g, &mut state).unwrap();
    }
    let (mut pc, _) = both(&[1.0], &[1]);
    let (_, gg) = both(&[1.0], &[1]);
    let r = optim::step(&sgd(0.0, 0.0, false), 0.1, 0.0, 1, &mut pc, &gg, &mut []);
    assert!(
        matches!(r, Err(kiln::Error::DeviceMismatch { .. })),
        "devices: {r:?}"
    );
}

#[test]
fn step_is_one_dispatch_without_readback() {
    // A device of its own, so other tests' work does not show in the counters.
    let dev = Device::gpu().unwrap();
    let rule = adam(true);
    let mut p = Tensor::from_slice(&dev, &random(300, 1), &[300]).unwrap();
    let g = Tensor::from_slice(&dev, &random(300, 2), &[300]).unwrap();
    let mut state = rule.new_state(&p).unwrap();
    let before = dev.stats();
    for t in 1..=3 {
        optim::step(&rule, 0.01, 0.0, t, &mut p, &g, &mut state).unwrap();
    }
    let after = dev.stats();
    assert_eq!(after.dispatches - before.dispatches, 3);
    assert_eq!(after.bytes_read, before.bytes_read);
    dev.synchronize().unwrap();
}

/// Gradients of the sizes above plus an empty one, on both devices.
fn gradient_set(seed: u64) -> (Vec<Vec<f32>>, Vec<Tensor>, Vec<Tensor>) {
    let mut data: Vec<Vec<f32>> = SIZES.iter().map(|&n| random(n, seed + n as u64)).collect();
    data.push(Vec::new());
    let mut cpu = Vec::new();
    let mut gpu_t = Vec::new();
    for d in &data {
        let shape = if d.is_empty() {
            vec![0]
        } else {
            shape_of(d.len())
        };
        let (c, g) = both(d, &shape);
        cpu.push(c);
        gpu_t.push(g);
    }
    (data, cpu, gpu_t)
}

#[test]
fn global_norm_matches_cpu_and_reference() {
    let (data, cpu, gpu_t) = gradient_set(7);
    let want: f64 = data.iter().flatten().map(|&v| v as f64 * v as f64).sum();
    let (mut nc, mut ng) = both(&[-1.0], &[1]);
    optim::global_norm_sq_into(&cpu.iter().collect::<Vec<_>>(), &mut nc).unwrap();
    optim::global_norm_sq_into(&gpu_t.iter().collect::<Vec<_>>(), &mut ng).unwrap();
    assert_close(
        &nc.to_vec().unwrap(),
        &[want as f32],
        1e-6,
        0.0,
        "cpu norm_sq",
    );
    assert_same(&ng, &nc, 1e-5, 0.0, "gpu norm_sq");
    // Repeated: the result is overwritten, not accumulated.
    optim::global_norm_sq_into(&gpu_t.iter().collect::<Vec<_>>(), &mut ng).unwrap();
    assert_same(&ng, &nc, 1e-5, 0.0, "gpu norm_sq again");
    // No gradients: zero.
    optim::global_norm_sq_into(&[], &mut ng).unwrap();
    assert_eq!(ng.to_vec().unwrap(), vec![0.0]);
}

#[test]
fn clip_matches_cpu() {
    let (data, mut cpu, mut gpu_t) = gradient_set(11);
    let norm = data
        .iter()
        .flatten()
        .map(|&v| v as f64 * v as f64)
        .sum::<f64>()
        .sqrt();
    let (mut nc, mut ng) = both(&[0.0], &[1]);
    optim::global_norm_sq_into(&cpu.iter().collect::<Vec<_>>(), &mut nc).unwrap();
    optim::global_norm_sq_into(&gpu_t.iter().collect::<Vec<_>>(), &mut ng).unwrap();

    // Above the norm: every gradient stays exactly as it was.
    let max_norm = (2.0 * norm) as f32;
    optim::clip_by_global_norm(&mut cpu.iter_mut().collect::<Vec<_>>(), &nc, max_norm).unwrap();
    optim::clip_by_global_norm(&mut gpu_t.iter_mut().collect::<Vec<_>>(), &ng, max_norm).unwrap();
    for ((d, c), g) in data.iter().zip(&cpu).zip(&gpu_t) {
        assert_eq!(&c.to_vec().unwrap(), d, "cpu unclipped");
        assert_eq!(&g.to_vec().unwrap(), d, "gpu unclipped");
    }

    // Below the norm: scaled by max_norm / norm.
    let max_norm = (0.25 * norm) as f32;
    optim::clip_by_global_norm(&mut cpu.iter_mut().collect::<Vec<_>>(), &nc, max_norm).unwrap();
    optim::clip_by_global_norm(&mut gpu_t.iter_mut().collect::<Vec<_>>(), &ng, max_norm).unwrap();
    let scale = max_norm as f64 / (norm + 1e-6);
    for ((d, c), g) in data.iter().zip(&cpu).zip(&gpu_t) {
        let want: Vec<f32> = d.iter().map(|&v| (v as f64 * scale) as f32).collect();
        assert_close(&c.to_vec().unwrap(), &want, 1e-6, 1e-7, "cpu clipped");
        assert_same(g, c, 1e-5, 1e-7, "gpu clipped");
    }
}

#[test]
fn clip_by_hand() {
    // |(3, 4)| = 5, so max_norm 1 scales by 1/5: (0.6, 0.8).
    assert!((optim::grad_scale(25.0, 1.0) - 0.2).abs() < 1e-7);
    assert_eq!(optim::grad_scale(25.0, 10.0), 1.0);
    for dev in [Device::cpu(), gpu()] {
        let mut a = Tensor::from_slice(&dev, &[3.0], &[1]).unwrap();
        let mut b = Tensor::from_slice(&dev, &[4.0], &[1]).unwrap();
        let mut norm_sq = Tensor::zeros(&dev, &[1]).unwrap();
        optim::global_norm_sq_into(&[&a, &b], &mut norm_sq).unwrap();
        assert_eq!(norm_sq.to_vec().unwrap(), vec![25.0], "{dev:?}");
        optim::clip_by_global_norm(&mut [&mut a, &mut b], &norm_sq, 1.0).unwrap();
        assert_close(&a.to_vec().unwrap(), &[0.6], 0.0, 1e-6, "a");
        assert_close(&b.to_vec().unwrap(), &[0.8], 0.0, 1e-6, "b");
    }
}

#[test]
fn clipping_stays_on_the_gpu() {
    let dev = Device::gpu().unwrap();
    let mut a = Tensor::from_slice(&dev, &random(70000, 3), &[70000]).unwrap();
    let mut b = Tensor::from_slice(&dev, &random(5, 4), &[5]).unwrap();
    let mut norm_sq = Tensor::zeros(&dev, &[1]).unwrap();
    let before = dev.stats();
    optim::global_norm_sq_into(&[&a, &b], &mut norm_sq).unwrap();
    optim::clip_by_global_norm(&mut [&mut a, &mut b], &norm_sq, 0.1).unwrap();
    let after = dev.stats();
    assert_eq!(after.bytes_read, before.bytes_read, "no readback");
    assert_eq!(after.dispatches - before.dispatches, 2 + 1 + 2);
    let a = a.to_vec().unwrap();
    let b = b.to_vec().unwrap();
    let norm = a
        .iter()
        .chain(&b)
        .map(|&v| v as f64 * v as f64)
        .sum::<f64>()
        .sqrt();
    assert!((norm - 0.1).abs() < 1e-5, "clipped norm {norm}");
}

#[test]
fn norm_shape_errors() {
    let dev = gpu();
    let g = Tensor::zeros(&dev, &[4]).unwrap();
    let mut out2 = Tensor::zeros(&dev, &[2]).unwrap();
    let r = optim::global_norm_sq_into(&[&g], &mut out2);
    assert!(matches!(r, Err(kiln::Error::Shape { .. })), "{r:?}");
    let mut g = Tensor::zeros(&dev, &[4]).unwrap();
    let r = optim::clip_by_global_norm(&mut [&mut g], &out2, 1.0);
    assert!(matches!(r, Err(kiln::Error::Shape { .. })), "{r:?}");
}

/// `step_many` on the GPU (four small tensors per dispatch, a large one alone) against
/// `step` on the CPU, tensor by tensor, for rules with every combination of state slots;
/// six small tensors of awkward sizes make one full group of four and one of two, the
/// large one (100,003 values) a dispatch of its own, and the GPU state starts as NaN garbage.
#[test]
fn step_many_matches_step_per_tensor() {
    let rules = [
        ("sgd", sgd(0.0, 0.0, false), 0.0),
        ("nesterov", sgd(0.9, 0.0, true), 0.01),
        ("adam amsgrad", adam(true), 0.01),
        (
            "rmsprop centered momentum",
            Rule::RmsProp {
                alpha: 0.9,
                eps: 1e-8,
                momentum: 0.9,
                centered: true,
            },
            0.01,
        ),
        (
            "rmsprop momentum",
            Rule::RmsProp {
                alpha: 0.9,
                eps: 1e-8,
                momentum: 0.5,
                centered: false,
            },
            0.0,
        ),
        (
            "adagrad",
            Rule::Adagrad {
                eps: 1e-10,
                lr_decay: 0.1,
                initial_accumulator: 0.1,
            },
            0.01,
        ),
    ];
    let sizes = [1usize, 17, 1000, 3, 100003, 6, 5];
    let dev = Device::gpu().unwrap();
    let cpu = Device::cpu();
    for (name, rule, wd) in rules {
        let mut pc = Vec::new();
        let mut pg = Vec::new();
        let mut sc = Vec::new();
        let mut sg = Vec::new();
        for (k, &n) in sizes.iter().enumerate() {
            let theta = random(n, 50 + k as u64);
            pc.push(Tensor::from_slice(&cpu, &theta, &[n]).unwrap());
            pg.push(Tensor::from_slice(&dev, &theta, &[n]).unwrap());
            sc.push(rule.new_state(&pc[k]).unwrap());
            sg.push(
                (0..rule.state_slots())
                    .map(|_| Tensor::full(&dev, &[n], f32::NAN).unwrap())
                    .collect::<Vec<_>>(),
            );
        }
        for t in 1..=STEPS as u64 {
            let grads: Vec<Vec<f32>> = sizes
                .iter()
                .enumerate()
                .map(|(k, &n)| random(n, 100 * t + k as u64))
                .collect();
            let gc: Vec<Tensor> = grads
                .iter()
                .map(|g| Tensor::from_slice(&cpu, g, &[g.len()]).unwrap())
                .collect();
            let gg: Vec<Tensor> = grads
                .iter()
                .map(|g| Tensor::from_slice(&dev, g, &[g.len()]).unwrap())
                .collect();
            for k in 0..sizes.len() {
                optim::step(&rule, 0.01, wd, t, &mut pc[k], &gc[k], &mut sc[k]).unwrap();
            }
            let before = dev.stats().dispatches;
            let mut slots: Vec<optim::Slot> = pg
                .iter_mut()
                .zip(&gg)
                .zip(sg.iter_mut())
                .map(|((value, grad), state)| optim::Slot { value, grad, state })
                .collect();
            optim::step_many(&rule, 0.01, wd, t, &mut slots).unwrap();
            // Six small tensors in groups of four where the adapter binds enough storage
            // buffers (one each where not), and the large one alone.
            let want = if optim::groups_of_four(&dev) {
                2 + 1
            } else {
                6 + 1
            };
            assert_eq!(dev.stats().dispatches - before, want, "{name}: dispatches");
        }
        for k in 0..sizes.len() {
            let what = format!("{name} tensor {k} (n={})", sizes[k]);
            let want = pc[k].to_vec().unwrap();
            assert_close(&pg[k].to_vec().unwrap(), &want, RTOL, ATOL, &what);
            for (s, (c, g)) in sc[k].iter().zip(&sg[k]).enumerate() {
                let what = format!("{what} state {s}");
                assert_close(
                    &g.to_vec().unwrap(),
                    &c.to_vec().unwrap(),
                    RTOL,
                    ATOL,
                    &what,
                );
            }
        }
    }
}

/// Three rules of one kernel shape with different numbers each.
fn trios() -> Vec<[Rule; 3]> {
    let sgd = |momentum, nesterov| Rule::Sgd {
        momentum,
        dampening: 0.0,
        nesterov,
    };
    let adam = |beta1, beta2, amsgrad| Rule::Adam {
        beta1,
        beta2,
        eps: 1e-8,
        amsgrad,
    };
    let adamw = |beta1, beta2| Rule::AdamW {
        beta1,
        beta2,
        eps: 1e-6,
    };
    let rms = |alpha, momentum| Rule::RmsProp {
        alpha,
        eps: 1e-8,
        momentum,
        centered: true,
    };
    let adagrad = |initial_accumulator| Rule::Adagrad {
        eps: 1e-10,
        lr_decay: 0.01,
        initial_accumulator,
    };
    vec![
        [sgd(0.0, false), sgd(0.0, false), sgd(0.0, false)],
        [sgd(0.9, true), sgd(0.5, true), sgd(0.8, true)],
        [
            adam(0.9, 0.999, false),
            adam(0.8, 0.99, false),
            adam(0.95, 0.9, false),
        ],
        [
            adam(0.9, 0.999, true),
            adam(0.8, 0.99, true),
            adam(0.5, 0.9, true),
        ],
        [adamw(0.9, 0.999), adamw(0.8, 0.99), adamw(0.7, 0.9)],
        [rms(0.99, 0.9), rms(0.9, 0.5), rms(0.5, 0.1)],
        [adagrad(0.0), adagrad(0.1), adagrad(1.0)],
    ]
}

#[test]
fn stacked_trials_step_as_each_trial_alone() {
    let (lr, wd) = ([0.01f32, 0.003, 0.1], [0.0f32, 0.01, 0.1]);
    let cpu = Device::cpu();
    // Trial 3 belongs to another kernel: its row is zeros and it must not move.
    let trials = 4;
    for trio in trios() {
        assert!(trio.iter().all(|r| r.same_kernel(&trio[0])));
        for &n in &[1, 3, 17, 255, 256] {
            let theta0 = random(trials * n, n as u64);
            let grads: Vec<Vec<f32>> = (0..STEPS)
                .map(|s| random(trials * n, 100 + s as u64))
                .collect();
            let mut want = Vec::new();
            for k in 0..3 {
                let rule = &trio[k];
                let mut p = Tensor::from_slice(&cpu, &theta0[k * n..(k + 1) * n], &[n]).unwrap();
                let mut state = rule.new_state(&p).unwrap();
                for (s, g) in grads.iter().enumerate() {
                    let g = Tensor::from_slice(&cpu, &g[k * n..(k + 1) * n], &[n]).unwrap();
                    optim::step(rule, lr[k], wd[k], s as u64 + 1, &mut p, &g, &mut state).unwrap();
                }
                let state: Vec<Vec<f32>> = state.iter().map(|t| t.to_vec().unwrap()).collect();
                want.push((p.to_vec().unwrap(), state));
            }
            for device in [cpu.clone(), gpu()] {
                let what = format!("{:?} n={n} on {device:?}", trio[0]);
                let mut value = Tensor::from_slice(&device, &theta0, &[trials * n]).unwrap();
                let mut state = trio[0].new_state(&value).unwrap();
                for (s, g) in grads.iter().enumerate() {
                    let t = s as u64 + 1;
                    // Two rows of padding before the step's rows: the offset is honoured.
                    let mut table = vec![7.0; 2 * optim::TRIAL_ROW];
                    for k in 0..3 {
                        table.extend(trio[k].trial_row(lr[k], wd[k], t).unwrap());
                    }
                    table.extend([0.0; optim::TRIAL_ROW]);
                    let table = Tensor::from_slice(&device, &table, &[table.len()]).unwrap();
                    let g = Tensor::from_slice(&device, g, &[trials * n]).unwrap();
                    let slot = optim::TrialSlot {
                        value: &mut value,
                        grad: &g,
                        state: &mut state,
                    };
                    optim::step_trials(&trio[0], t, (&table, 2), trials, slot).unwrap();
                }
                let got = value.to_vec().unwrap();
                for (k, (p, st)) in want.iter().enumerate() {
                    assert_close(
                        &got[k * n..(k + 1) * n],
                        p,
                        RTOL,
                        ATOL,
                        &format!("{what} trial {k}"),
                    );
                    for (j, s) in st.iter().enumerate() {
                        let gs = state[j].to_vec().unwrap();
                        assert_close(
                            &gs[k * n..(k + 1) * n],
                            s,
                            RTOL,
                            ATOL,
                            &format!("{what} trial {k} state {j}"),
                        );
                    }
                }
                assert_eq!(
                    &got[3 * n..],
                    &theta0[3 * n..],
                    "{what}: the trial that is off moved"
                );
            }
        }
    }
    // Rows past the table and a length that does not split into the trials are errors.
    let mut value = Tensor::zeros(&cpu, &[6]).unwrap();
    let g = Tensor::zeros(&cpu, &[6]).unwrap();
    let table = Tensor::zeros(&cpu, &[2 * optim::TRIAL_ROW]).unwrap();
    let sgd = Rule::Sgd {
        momentum: 0.0,
        dampening: 0.0,
        nesterov: false,
    };
    for (row, trials) in [(1, 2), (0, 4), (0, 0)] {
        let slot = optim::TrialSlot {
            value: &mut value,
            grad: &g,
            state: &mut [],
        };
        assert!(optim::step_trials(&sgd, 1, (&table, row), trials, slot).is_err());
    }
}
