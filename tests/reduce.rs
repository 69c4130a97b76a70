mod common;
use common::*;
use kiln::ops::activation::RowSplit;
use kiln::ops::reduce;
use kiln::{Device, Tensor};

/// Element counts around the block of 16384 elements, and ones that need a second pass:
/// 4,194,305 is 256 full blocks and one more element, alone in a block of its own.
const LENGTHS: &[usize] = &[
    1, 2, 255, 16_383, 16_384, 16_385, 100_003, 1_000_000, 4_194_305,
];

/// The f64 sum, the reference for the sums and means.
fn sum64(x: &[f32]) -> f64 {
    x.iter().map(|&v| v as f64).sum()
}

/// `n` seeded integers in 0..=3, the last one 1000: every partial sum of these is an
/// integer below 2^24 (4,194,305 * 3 + 1000 < 16,777,216), so f32 adds them exactly in
/// any order, and a sum that drops any element, the last one above all, is wrong.
fn small_integers(n: usize, seed: u64) -> Vec<f32> {
    let mut x: Vec<f32> = random(n, seed)
        .iter()
        .map(|v| ((v + 1.0) * 2.0).floor())
        .collect();
    if let Some(last) = x.last_mut() {
        *last = 1000.0;
    }
    x
}

#[test]
fn sums_of_small_integers_are_exact_and_means_within_three_roundings() {
    let shapes = AWKWARD
        .iter()
        .map(|&(r, c)| vec![r, c])
        .chain(LENGTHS.iter().map(|&n| vec![n]));
    for shape in shapes {
        let n: usize = shape.iter().product();
        let x = small_integers(n, 1);
        let (xc, xg) = both(&x, &shape);
        let want = sum64(&x);
        assert!(want < 16_777_216.0 && want == want.round());
        let what = format!("sum {shape:?}");
        let cpu = reduce::sum(&xc).unwrap();
        assert_eq!(cpu.shape(), [1]);
        assert_eq!(cpu.to_vec().unwrap(), [want as f32], "{what} on the CPU");
        // A stale value shows if the last pass writes nothing.
        let mut gpu = Tensor::full(&xg.device(), &[1], f32::NAN).unwrap();
        reduce::sum_into(&xg, &mut gpu).unwrap();
        assert_eq!(gpu.to_vec().unwrap(), [want as f32], "{what} on the GPU");

        let mean = (want / n as f64) as f32;
        let what = format!("mean {shape:?}");
        // The CPU scales the exact f64 sum by 1/n; the GPU multiplies its exact sum by
        // 1/n rounded to f32, two roundings of 2^-24, to which the reference's own rounding
        // adds a third: 3 * 2^-24 < 1.8e-7. Dropping the last element moves the mean by
        // 1000/n, 1.6e-4 of it at n = 4,194,305.
        assert_close(
            &reduce::mean(&xc).unwrap().to_vec().unwrap(),
            &[mean],
            1.8e-7,
            0.0,
            &what,
        );
        assert_close(
            &reduce::mean(&xg).unwrap().to_vec().unwrap(),
            &[mean],
            1.8e-7,
            0.0,
            &what,
        );
    }
}

#[test]
fn zero_mean_sum_is_accurate_against_the_sum_of_magnitudes() {
    for &n in LENGTHS {
        let x = random(n, 2);
        let (_, xg) = both(&x, &[n]);
        let magnitude: f64 = x.iter().map(|v| v.abs() as f64).sum();
        let got = reduce::sum(&xg).unwrap().to_vec().unwrap();
        // A sum near zero has no relative accuracy; f32 tree sums stay within a few eps of
        // sum|x|. This checks rounding, not that every element is summed: at 4,194,305
        // elements the tolerance is about 2, more than any one element. The exact sums of
        // small integers above check that.
        let atol = (1e-6 * magnitude) as f32;
        assert_close(&got, &[sum64(&x) as f32], 0.0, atol, &format!("sum of {n}"));
    }
}

#[test]
fn empty_sum_is_zero_and_empty_mean_is_an_error() {
    for dev in [Device::cpu(), gpu()] {
        let x = Tensor::zeros(&dev, &[0, 3]).unwrap();
        // A stale value in the output shows if the empty sum writes nothing.
        let mut out = Tensor::full(&dev, &[1], 7.0).unwrap();
        reduce::sum_into(&x, &mut out).unwrap();
        assert_eq!(out.to_vec().unwrap(), [0.0]);
        assert!(matches!(reduce::mean(&x), Err(kiln::Error::Shape { .. })));
    }
}

/// The first index of the row maximum, written here independently of kiln.
fn first_argmax(row: &[f32]) -> usize {
    let mut best = 0;
    for (i, &v) in row.iter().enumerate() {
        if v > row[best] {
            best = i;
        }
    }
    best
}

fn check_argmax(x: &[f32], r: usize, c: usize, what: &str) {
    let want: Vec<f32> = x.chunks(c).map(|row| first_argmax(row) as f32).collect();
    let (xc, xg) = both(x, &[r, c]);
    let cpu = reduce::argmax_rows(&xc).unwrap();
    assert_eq!(cpu.shape(), [r]);
    assert_close(
        &cpu.to_vec().unwrap(),
        &want,
        0.0,
        0.0,
        &format!("cpu {what}"),
    );
    for split in [RowSplit::Auto, RowSplit::Invocation, RowSplit::Workgroup] {
        let mut gpu = Tensor::uninit(&xg.device(), &[r]).unwrap();
        reduce::argmax_rows_into_split(&xg, &mut gpu, split).unwrap();
        assert_close(
            &gpu.to_vec().unwrap(),
            &want,
            0.0,
            0.0,
            &format!("{what} {split:?}"),
        );
    }
}

/// AWKWARD plus both sides of the 32-column switch and wide rows.
fn row_shapes() -> Vec<(usize, usize)> {
    let mut s = AWKWARD.to_vec();
    s.extend([(7, 32), (7, 33), (5, 64), (3, 65), (9, 5000)]);
    s
}

#[test]
fn argmax_rows_matches_reference() {
    for (r, c) in row_shapes() {
        check_argmax(&random(r * c, 3), r, c, &format!("argmax {r}x{c}"));
    }
}

#[test]
fn argmax_rows_takes_the_first_of_tied_maxima() {
    for (r, c) in row_shapes() {
        // Five levels make ties within a row, often several at the maximum.
        let x: Vec<f32> = random(r * c, 4).iter().map(|v| (v * 2.5).round()).collect();
        check_argmax(&x, r, c, &format!("tied argmax {r}x{c}"));
        // Equal rows: every column ties and column 0 must win.
        check_argmax(
            &vec![-3.0; r * c],
            r,
            c,
            &format!("constant argmax {r}x{c}"),
        );
    }
    // Infinities are ordinary values; -inf everywhere but one column still finds it.
    let mut x = vec![f32::NEG_INFINITY; 2 * 70];
    x[70 + 69] = f32::INFINITY;
    x[5] = -1e30;
    check_argmax(&x, 2, 70, "infinite argmax");
}

#[test]
fn cpu_argmax_treats_nan_as_the_maximum() {
    let x = [1.0, f32::NAN, 5.0, f32::NAN, 3.0, 2.0];
    let t = Tensor::from_slice(&Device::cpu(), &x, &[2, 3]).unwrap();
    assert_eq!(
        reduce::argmax_rows(&t).unwrap().to_vec().unwrap(),
        [1.0, 0.0]
    );
}

#[test]
fn argmax_rows_fold_past_65535_workgroups() {
    for (r, c) in [(100_000, 10), (100_000, 40), (70_000, 1)] {
        check_argmax(&random(r * c, 5), r, c, &format!("argmax {r}x{c}"));
    }
}

#[test]
fn bad_shapes_are_errors() {
    for dev in [Device::cpu(), gpu()] {
        let x = Tensor::zeros(&dev, &[4, 6]).unwrap();
        let cube = Tensor::zeros(&dev, &[2, 3, 4]).unwrap();
        let empty_rows = Tensor::zeros(&dev, &[4, 0]).unwrap();
        let is_shape = |r: kiln::Result<()>| matches!(r, Err(kiln::Error::Shape { .. }));
        let mut two = Tensor::zeros(&dev, &[2]).unwrap();
        assert!(is_shape(reduce::sum_into(&x, &mut two)));
        assert!(is_shape(reduce::mean_into(&x, &mut two)));
        let mut scalar = Tensor::zeros(&dev, &[1, 1]).unwrap();
        assert!(is_shape(reduce::sum_into(&x, &mut scalar)));
        // [B, T, C] is B * T rows of C (sequences): one argmax per position.
        assert_eq!(reduce::argmax_rows(&cube).unwrap().shape(), [6]);
        assert!(is_shape(reduce::argmax_rows(&empty_rows).map(|_| ())));
        let mut six = Tensor::zeros(&dev, &[6]).unwrap();
        assert!(is_shape(reduce::argmax_rows_into(&x, &mut six)));
    }
}
