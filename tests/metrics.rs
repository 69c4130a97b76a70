mod common;
use common::*;
use kiln::ops::metrics::{self, ConfusionMatrix};
use kiln::{Device, Error, Tensor};

/// Scores on a coarse grid (many ties, so "first maximum wins" matters) and labels.
fn batch(rows: usize, classes: usize, seed: u64) -> (Vec<f32>, Vec<f32>) {
    let scores = random(rows * classes, seed)
        .iter()
        .map(|v| (v * 3.0).round())
        .collect();
    let labels = random(rows, seed + 1)
        .iter()
        .map(|v| (((v + 1.0) / 2.0 * classes as f32) as usize).min(classes - 1) as f32)
        .collect();
    (scores, labels)
}

/// counts[true][argmax] from the definition, first maximum on ties.
fn reference(scores: &[f32], labels: &[f32], classes: usize, counts: &mut [f32]) {
    for (r, &y) in labels.iter().enumerate() {
        let row = &scores[r * classes..(r + 1) * classes];
        let max = row.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
        let k = row.iter().position(|&v| v == max).unwrap();
        counts[y as usize * classes + k] += 1.0;
    }
}

#[test]
fn confusion_matches_reference_on_awkward_shapes() {
    // (2000, 3) and (60000, 7) take several workgroups of the local-histogram kernel,
    // (255, 257) and (128, 784) the global one.
    let shapes = AWKWARD
        .iter()
        .copied()
        .chain([(2000, 3), (60000, 7), (3000, 50)]);
    for (rows, classes) in shapes {
        let what = format!("{rows}x{classes}");
        let (mut cc, mut cg) = both(&vec![0.0; classes * classes], &[classes, classes]);
        let mut want = vec![0.0; classes * classes];
        // Two batches: counts accumulate.
        for seed in [1, 2] {
            let (scores, labels) = batch(rows, classes, seed);
            reference(&scores, &labels, classes, &mut want);
            let (sc, sg) = both(&scores, &[rows, classes]);
            let (lc, lg) = both(&labels, &[rows]);
            metrics::confusion_accumulate(&sc, &lc, &mut cc).unwrap();
            metrics::confusion_accumulate(&sg, &lg, &mut cg).unwrap();
        }
        assert_close(
            &cc.to_vec().unwrap(),
            &want,
            0.0,
            0.0,
            &format!("cpu {what}"),
        );
        assert_close(
            &cg.to_vec().unwrap(),
            &want,
            0.0,
            0.0,
            &format!("gpu {what}"),
        );
        assert_eq!(want.iter().sum::<f32>(), 2.0 * rows as f32);
    }
}

#[test]
fn binary_confusion_uses_the_threshold() {
    // Probabilities at 0.5: a score equal to the threshold predicts 0.
    let p = [0.9, 0.5, 0.2, 0.7, 0.51, 0.1];
    let y = [1.0, 1.0, 0.0, 0.0, 1.0, 1.0];
    // true 0: predicted 0 (0.2), 1 (0.7); true 1: predicted 1 (0.9, 0.51), 0 (0.5, 0.1).
    let want = [1.0, 1.0, 2.0, 2.0];
    for shape in [vec![6, 1], vec![6]] {
        let (pc, pg) = both(&p, &shape);
        let (yc, yg) = both(&y, &[6]);
        let (mut cc, mut cg) = both(&[0.0; 4], &[2, 2]);
        metrics::confusion_accumulate_binary(&pc, &yc, 0.5, &mut cc).unwrap();
        metrics::confusion_accumulate_binary(&pg, &yg, 0.5, &mut cg).unwrap();
        assert_close(&cc.to_vec().unwrap(), &want, 0.0, 0.0, "cpu");
        assert_close(&cg.to_vec().unwrap(), &want, 0.0, 0.0, "gpu");
    }
    // Logits at 0 over a larger batch.
    let rows = 5000;
    let logits = random(rows, 3);
    let labels: Vec<f32> = random(rows, 4)
        .iter()
        .map(|v| f32::from(*v > 0.0))
        .collect();
    let mut want = [0.0; 4];
    for (x, y) in logits.iter().zip(&labels) {
        want[*y as usize * 2 + usize::from(*x > 0.0)] += 1.0;
    }
    let (pc, pg) = both(&logits, &[rows, 1]);
    let (yc, yg) = both(&labels, &[rows]);
    let (mut cc, mut cg) = both(&[0.0; 4], &[2, 2]);
    metrics::confusion_accumulate_binary(&pc, &yc, 0.0, &mut cc).unwrap();
    metrics::confusion_accumulate_binary(&pg, &yg, 0.0, &mut cg).unwrap();
    assert_close(&cc.to_vec().unwrap(), &want, 0.0, 0.0, "cpu logits");
    assert_close(&cg.to_vec().unwrap(), &want, 0.0, 0.0, "gpu logits");
}

#[test]
fn confusion_matrix_metrics_by_hand() {
    // true \ predicted    0  1  2  3
    //   0                 5  1  0  0
    //   1                 2  3  1  0
    //   2                 0  0  0  0   (never a label, predicted once)
    //   3                 0  0  0  0   (absent: left out of the macro averages)
    let counts = [5, 1, 0, 0, 2, 3, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    let m = ConfusionMatrix::new(4, counts.to_vec()).unwrap();

    // The same matrix from labelled rows through the GPU accumulator.
    let pairs = [(0, 0, 5), (0, 1, 1), (1, 0, 2), (1, 1, 3), (1, 2, 1)];
    let (mut scores, mut labels) = (Vec::new(), Vec::new());
    for (t, p, n) in pairs {
        for _ in 0..n {
            let mut row = [0.0; 4];
            row[p] = 1.0;
            scores.extend(row);
            labels.push(t as f32);
        }
    }
    let (_, sg) = both(&scores, &[12, 4]);
    let (_, lg) = both(&labels, &[12]);
    let (_, mut cg) = both(&[0.0; 16], &[4, 4]);
    metrics::confusion_accumulate(&sg, &lg, &mut cg).unwrap();
    assert_eq!(ConfusionMatrix::from_tensor(&cg).unwrap(), m);

    let close = |got: f64, want: f64, what: &str| {
        assert!((got - want).abs() < 1e-12, "{what}: {got} vs {want}")
    };
    assert_eq!(m.total(), 12);
    assert_eq!((m.support(1), m.predicted(0), m.count(1, 2)), (6, 7, 1));
    // accuracy = trace / total
    close(m.accuracy(), 8.0 / 12.0, "accuracy");
    // class 0: tp 5, fp 2, fn 1; class 1: tp 3, fp 1, fn 3; class 2: tp 0, fp 1, fn 0.
    close(m.precision(0), 5.0 / 7.0, "precision 0");
    close(m.recall(0), 5.0 / 6.0, "recall 0");
    close(
        m.f1(0),
        2.0 * (5.0 / 7.0) * (5.0 / 6.0) / (5.0 / 7.0 + 5.0 / 6.0),
        "f1 0",
    );
    close(m.precision(1), 3.0 / 4.0, "precision 1");
    close(m.recall(1), 3.0 / 6.0, "recall 1");
    close(m.f1(1), 2.0 * 0.75 * 0.5 / 1.25, "f1 1");
    // Zero division gives 0: class 2 has no support, class 3 nothing at all.
    close(m.precision(2), 0.0, "precision 2");
    close(m.recall(2), 0.0, "recall 2");
    close(m.f1(2), 0.0, "f1 2");
    close(m.precision(3) + m.recall(3) + m.f1(3), 0.0, "class 3");
    // Macro: the mean over classes 0, 1, 2.
    close(
        m.macro_precision(),
        (5.0 / 7.0 + 0.75 + 0.0) / 3.0,
        "macro precision",
    );
    close(
        m.macro_recall(),
        (5.0 / 6.0 + 0.5 + 0.0) / 3.0,
        "macro recall",
    );
    close(m.macro_f1(), (10.0 / 13.0 + 0.6 + 0.0) / 3.0, "macro f1");

    let empty = ConfusionMatrix::new(2, vec![0; 4]).unwrap();
    assert_eq!(
        (empty.accuracy(), empty.macro_f1(), empty.precision(0)),
        (0.0, 0.0, 0.0)
    );
    assert!(matches!(
        ConfusionMatrix::new(3, vec![0; 4]),
        Err(Error::Shape { .. })
    ));
    let t = |v: &[f32], s: &[usize]| Tensor::from_slice(&Device::cpu(), v, s).unwrap();
    assert!(matches!(
        ConfusionMatrix::from_tensor(&t(&[0.0; 6], &[2, 3])),
        Err(Error::Shape { .. })
    ));
    let fractional = t(&[1.0, 0.5, 0.0, 2.0], &[2, 2]);
    assert!(matches!(
        ConfusionMatrix::from_tensor(&fractional),
        Err(Error::InvalidArgument { .. })
    ));
}

#[test]
fn abs_sq_error_matches_reference() {
    let shapes = AWKWARD.iter().copied().chain([(3000, 1000)]);
    for (rows, cols) in shapes {
        let what = format!("{rows}x{cols}");
        let start = [1.5f32, 2.5];
        let (mut sc, mut sg) = both(&start, &[2]);
        let mut want = [start[0] as f64, start[1] as f64];
        for seed in [1, 2] {
            let (x, t) = (random(rows * cols, seed), random(rows * cols, seed + 10));
            for (x, t) in x.iter().zip(&t) {
                let e = *x as f64 - *t as f64;
                want[0] += e.abs();
                want[1] += e * e;
            }
            let (xc, xg) = both(&x, &[rows, cols]);
            let (tc, tg) = both(&t, &[rows, cols]);
            metrics::abs_sq_error_accumulate(&xc, &tc, &mut sc).unwrap();
            metrics::abs_sq_error_accumulate(&xg, &tg, &mut sg).unwrap();
        }
        let want = [want[0] as f32, want[1] as f32];
        assert_close(
            &sc.to_vec().unwrap(),
            &want,
            1e-6,
            0.0,
            &format!("cpu {what}"),
        );
        // f32 partial sums over up to 6M terms, combined by tree reductions.
        assert_close(
            &sg.to_vec().unwrap(),
            &want,
            1e-5,
            0.0,
            &format!("gpu {what}"),
        );
    }
}

#[test]
fn out_of_range_labels_are_an_error_on_cpu_and_uncounted_on_gpu() {
    let (rows, classes) = (50, 3);
    let (scores, _) = batch(rows, classes, 8);
    for bad in [-1.0, 3.0, 0.5, f32::NAN] {
        let mut labels: Vec<f32> = (0..rows).map(|r| (r % classes) as f32).collect();
        labels[7] = bad;
        let (sc, sg) = both(&scores, &[rows, classes]);
        let (lc, lg) = both(&labels, &[rows]);
        let (mut cc, mut cg) = both(&[0.0; 9], &[3, 3]);
        match metrics::confusion_accumulate(&sc, &lc, &mut cc) {
            Err(Error::InvalidArgument { detail, .. }) => {
                assert!(
                    detail.contains(&format!("{bad}")) && detail.contains("3 classes"),
                    "{detail}"
                );
            }
            other => panic!("label {bad}: expected InvalidArgument, got {other:?}"),
        }
        assert_eq!(cc.to_vec().unwrap(), [0.0; 9], "nothing counted on error");
        metrics::confusion_accumulate(&sg, &lg, &mut cg).unwrap();
        let m = ConfusionMatrix::from_tensor(&cg).unwrap();
        assert_eq!(
            m.total(),
            rows as u64 - 1,
            "label {bad}: the bad row is not counted"
        );
    }
    let (pc, pg) = both(&[0.2, 0.8], &[2, 1]);
    let (yc, yg) = both(&[1.0, 2.0], &[2]);
    let (mut cc, mut cg) = both(&[0.0; 4], &[2, 2]);
    assert!(matches!(
        metrics::confusion_accumulate_binary(&pc, &yc, 0.5, &mut cc),
        Err(Error::InvalidArgument { .. })
    ));
    metrics::confusion_accumulate_binary(&pg, &yg, 0.5, &mut cg).unwrap();
    assert_eq!(cg.to_vec().unwrap(), [0.0, 0.0, 1.0, 0.0]);
}

#[test]
fn bad_shapes_are_errors() {
    let shape_err = |r: kiln::Result<()>, what: &str| {
        assert!(matches!(r, Err(Error::Shape { .. })), "{what}: {r:?}");
    };
    for dev in [Device::cpu(), gpu()] {
        let t = |shape: &[usize]| Tensor::zeros(&dev, shape).unwrap();
        let (scores, labels) = (t(&[4, 3]), t(&[4]));
        shape_err(
            metrics::confusion_accumulate(&t(&[12]), &labels, &mut t(&[3, 3])),
            "1-D scores",
        );
        shape_err(
            metrics::confusion_accumulate(&t(&[4, 0]), &labels, &mut t(&[0, 0])),
            "no classes",
        );
        shape_err(
            metrics::confusion_accumulate(&scores, &t(&[3]), &mut t(&[3, 3])),
            "labels",
        );
        shape_err(
            metrics::confusion_accumulate(&scores, &labels, &mut t(&[3, 4])),
            "counts",
        );
        shape_err(
            metrics::confusion_accumulate(&scores, &labels, &mut t(&[9])),
            "flat counts",
        );
        shape_err(
            metrics::confusion_accumulate_binary(&scores, &labels, 0.5, &mut t(&[2, 2])),
            "2 columns",
        );
        shape_err(
            metrics::confusion_accumulate_binary(&labels, &labels, 0.5, &mut t(&[3, 3])),
            "binary counts",
        );
        shape_err(
            metrics::abs_sq_error_accumulate(&scores, &t(&[3, 4]), &mut t(&[2])),
            "target",
        );
        shape_err(
            metrics::abs_sq_error_accumulate(&scores, &scores, &mut t(&[1])),
            "sums",
        );
        metrics::confusion_accumulate(&scores, &labels, &mut t(&[3, 3])).unwrap();
        metrics::abs_sq_error_accumulate(&scores, &scores, &mut t(&[2])).unwrap();
    }
}

#[test]
fn metrics_stay_on_the_gpu() {
    // A device of its own, so other tests' dispatches do not show in its counters.
    let dev = Device::gpu().unwrap();
    let (rows, classes) = (10000, 10);
    let (scores, labels) = batch(rows, classes, 5);
    let s = Tensor::from_slice(&dev, &scores, &[rows, classes]).unwrap();
    let l = Tensor::from_slice(&dev, &labels, &[rows]).unwrap();
    let mut counts = Tensor::zeros(&dev, &[classes, classes]).unwrap();
    let mut sums = Tensor::zeros(&dev, &[2]).unwrap();
    let before = dev.stats();
    for _ in 0..3 {
        metrics::confusion_accumulate(&s, &l, &mut counts).unwrap();
        // 100000 elements: partial sums, then a finishing dispatch.
        metrics::abs_sq_error_accumulate(&s, &s, &mut sums).unwrap();
    }
    dev.synchronize().unwrap();
    let after = dev.stats();
    assert_eq!(after.dispatches - before.dispatches, 3 * (1 + 2));
    assert_eq!(after.bytes_read, before.bytes_read, "nothing read back");
    let m = ConfusionMatrix::from_tensor(&counts).unwrap();
    assert_eq!(m.total(), 3 * rows as u64);
    assert_eq!(sums.to_vec().unwrap(), [0.0, 0.0]);
}

#[test]
fn stacked_confusion_matches_each_trial_alone() {
    // 50 classes take the global kernel (2500 cells), the others the workgroup one.
    for &(trials, rows, classes) in &[(1, 1, 1), (3, 17, 10), (17, 255, 3), (3, 17, 50)] {
        let (_, labels) = batch(rows, classes, 3);
        let scores: Vec<f32> = (0..trials)
            .flat_map(|k| batch(rows, classes, 10 + k as u64).0)
            .collect();
        let mut want = vec![0.0; trials * classes * classes];
        let cells = classes * classes;
        for k in 0..trials {
            let s = &scores[k * rows * classes..(k + 1) * rows * classes];
            // Twice: the counts add up across batches.
            for _ in 0..2 {
                reference(s, &labels, classes, &mut want[k * cells..(k + 1) * cells]);
            }
        }
        for device in [Device::cpu(), gpu()] {
            let p = Tensor::from_slice(&device, &scores, &[trials, rows, classes]).unwrap();
            let y = Tensor::from_slice(&device, &labels, &[rows]).unwrap();
            let mut counts = Tensor::zeros(&device, &[trials, classes, classes]).unwrap();
            for _ in 0..2 {
                metrics::confusion_accumulate_stacked(&p, &y, &mut counts).unwrap();
            }
            assert_eq!(
                counts.to_vec().unwrap(),
                want,
                "{trials}x{rows}x{classes} on {device:?}"
            );
        }
    }
    let cpu = Device::cpu();
    let p = Tensor::zeros(&cpu, &[2, 3, 4]).unwrap();
    let y = Tensor::zeros(&cpu, &[3]).unwrap();
    let mut wrong = Tensor::zeros(&cpu, &[4, 4]).unwrap();
    let e = metrics::confusion_accumulate_stacked(&p, &y, &mut wrong);
    assert!(matches!(e, Err(Error::Shape { .. })), "{e:?}");
}
