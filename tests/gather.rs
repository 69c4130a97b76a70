mod common;
use common::*;
use kiln::ops::gather::{gather_rows_into, PaletteRows};
use kiln::Tensor;

#[test]
fn gather_matches_reference() {
    for &(n, cols) in &[(1usize, 1usize), (17, 33), (1000, 10), (300, 784)] {
        let data = random(n * cols, 7);
        let index: Vec<f32> = (0..n).rev().map(|i| ((i * 7919) % n) as f32).collect();
        let (dc, dg) = both(&data, &[n, cols]);
        let (ic, ig) = both(&index, &[n]);
        for (start, rows) in [(0, n), (n / 3, n - n / 3), (n - 1, 1)] {
            let mut oc = Tensor::zeros(&kiln::Device::cpu(), &[rows, cols]).unwrap();
            let mut og = Tensor::zeros(&gpu(), &[rows, cols]).unwrap();
            gather_rows_into(&dc, &ic, start, &mut oc).unwrap();
            gather_rows_into(&dg, &ig, start, &mut og).unwrap();
            let want: Vec<f32> = (0..rows)
                .flat_map(|i| {
                    let s = index[start + i] as usize;
                    data[s * cols..(s + 1) * cols].to_vec()
                })
                .collect();
            assert_close(&oc.to_vec().unwrap(), &want, 0.0, 0.0, "cpu gather");
            assert_same(&og, &oc, 0.0, 0.0, "gpu gather");
        }
    }
}

#[test]
fn gather_checks_ranges() {
    let (dc, _) = both(&[1.0, 2.0, 3.0], &[3, 1]);
    let (ic, _) = both(&[0.0, 5.0], &[2]);
    let mut out = Tensor::zeros(&kiln::Device::cpu(), &[2, 1]).unwrap();
    assert!(matches!(
        gather_rows_into(&dc, &ic, 0, &mut out),
        Err(kiln::Error::InvalidArgument { .. })
    ));
    assert!(matches!(
        gather_rows_into(&dc, &ic, 1, &mut out),
        Err(kiln::Error::Shape { .. })
    ));
}

#[test]
fn chunked_gather_equals_whole_gather() {
    let (n, cols) = (1000, 7);
    let data = random(n * cols, 8);
    let index: Vec<f32> = (0..n).map(|i| ((i * 613) % n) as f32).collect();
    for device in [kiln::Device::cpu(), gpu()] {
        let whole = Tensor::from_slice(&device, &data, &[n, cols]).unwrap();
        let idx = Tensor::from_slice(&device, &index, &[n]).unwrap();
        let mut a = Tensor::zeros(&device, &[100, cols]).unwrap();
        kiln::ops::gather::gather_rows_into(&whole, &idx, 250, &mut a).unwrap();
        let mut b = Tensor::zeros(&device, &[100, cols]).unwrap();
        for (lo, hi) in [(0, 333), (333, 800), (800, 1000)] {
            let chunk =
                Tensor::from_slice(&device, &data[lo * cols..hi * cols], &[hi - lo, cols]).unwrap();
            kiln::ops::gather::gather_chunk_into(&chunk, lo, &idx, 250, &mut b).unwrap();
        }
        assert_eq!(a.to_vec().unwrap(), b.to_vec().unwrap());
    }
}

fn palette_gather_case(n: usize, cols: usize) {
    let data: Vec<f32> = (0..n * cols)
        .map(|i| ((i * 7919) % 256) as f32 / 255.0)
        .collect();
    let palette = kiln::ops::gather::PaletteRows::palette_of(&data).expect("256 levels fit");
    assert_eq!(palette.len(), 256);
    let index: Vec<f32> = (0..n).map(|i| ((i * 113) % n) as f32).collect();
    for device in [kiln::Device::cpu(), gpu()] {
        let idx = Tensor::from_slice(&device, &index, &[n]).unwrap();
        let mut got = Tensor::zeros(&device, &[50, cols]).unwrap();
        for (lo, hi) in [(0, 120), (120, 300)] {
            let rows = &data[lo * cols..hi * cols];
            let chunk =
                kiln::ops::gather::PaletteRows::pack(&device, rows, cols, &palette).unwrap();
            chunk.gather_into(lo, &idx, 100, &mut got).unwrap();
        }
        let want: Vec<f32> = (100..150)
            .flat_map(|i| {
                let s = index[i] as usize;
                data[s * cols..(s + 1) * cols].to_vec()
            })
            .collect();
        assert_eq!(got.to_vec().unwrap(), want, "{device:?} cols {cols}");
    }
}

#[test]
fn palette_gather_returns_the_original_values() {
    // Pixel-like data: 256 levels scaled by 1/255; an odd row width (the scalar kernel)
    // and a multiple of 4 (the vec4 one).
    for cols in [37, 784] {
        palette_gather_case(300, cols);
    }
    // 257 distinct values do not fit a byte.
    let wide: Vec<f32> = (0..257).map(|i| i as f32).collect();
    assert!(kiln::ops::gather::PaletteRows::palette_of(&wide).is_none());
}

#[test]
fn palette_packing_keeps_runs_and_rejects_values_outside_the_palette() {
    // Image-like rows: runs of background with a few levels between (runs are packed
    // with the last value's code, so a run that ends mid-word must end there).
    let (n, cols) = (40, 17);
    let data: Vec<f32> = (0..n * cols)
        .map(|i| {
            if (i / 5) % 3 == 0 {
                (i % 7) as f32 / 8.0
            } else {
                0.0
            }
        })
        .collect();
    let palette = PaletteRows::palette_of(&data).expect("few levels");
    let index: Vec<f32> = (0..n).map(|i| i as f32).collect();
    let device = gpu();
    let idx = Tensor::from_slice(&device, &index, &[n]).unwrap();
    let chunk = PaletteRows::pack(&device, &data, cols, &palette).unwrap();
    let mut got = Tensor::zeros(&device, &[n, cols]).unwrap();
    chunk.gather_into(0, &idx, 0, &mut got).unwrap();
    assert_eq!(got.to_vec().unwrap(), data);

    // A value the palette lacks, after a run of one it has: a typed error naming its row.
    let mut bad = vec![0.0; 3 * cols];
    bad[2 * cols + 4] = 0.3;
    let err = PaletteRows::pack(&device, &bad, cols, &palette)
        .err()
        .expect("0.3 is no level");
    let text = err.to_string();
    assert!(text.contains("0.3") && text.contains("row 2"), "{text}");
}

#[test]
fn training_on_palette_data_matches_the_cpu_reference() {
    // The GPU packs these inputs as bytes (the CPU keeps f32): the steps must agree.
    use kiln::{Device, FitOptions, Loss, Optimizer, Sequential};
    let x: Vec<f32> = (0..64 * 20)
        .map(|i| ((i * 31) % 17) as f32 / 16.0)
        .collect();
    let y: Vec<f32> = (0..64).map(|i| (i % 3) as f32).collect();
    let mut weights = Vec::new();
    for device in [Device::cpu(), gpu()] {
        let model = Sequential::new(20)
            .dense(8)
            .relu()
            .dense(3)
            .build(&device, 4)
            .unwrap();
        let mut t = model
            .compile(
                Loss::SparseCategoricalCrossEntropy,
                Optimizer::sgd(0.1),
                &[],
            )
            .unwrap();
        t.fit(
            &x,
            &y,
            FitOptions {
                seed: 2,
                ..FitOptions::new(2, 16)
            },
        )
        .unwrap();
        weights.push(
            t.model
                .params()
                .iter()
                .flat_map(|p| p.value.to_vec().unwrap())
                .collect::<Vec<f32>>(),
        );
    }
    assert_close(
        &weights[1],
        &weights[0],
        1e-4,
        1e-5,
        "weights after 2 epochs",
    );
}

/// Inputs and targets in one call: the GPU (one dispatch where rows hold a multiple of 4
/// values) matches the CPU, for f32 and palette inputs, over two chunks.
#[test]
fn inputs_and_targets_gather_together() {
    use kiln::ops::gather::{PaletteRows, Rows};
    let n = 300;
    for (cols, ycols, palette) in [
        (784, 1, false),
        (784, 3, true),
        (36, 2, false),
        (37, 1, true),
    ] {
        let data: Vec<f32> = (0..n * cols)
            .map(|i| ((i * 7919) % 256) as f32 / 255.0)
            .collect();
        let targets = random(n * ycols, 5);
        let index: Vec<f32> = (0..n).map(|i| ((i * 113) % n) as f32).collect();
        let mut results = Vec::new();
        // A GPU device of its own, so other tests' work does not show in its counters.
        for device in [kiln::Device::cpu(), kiln::Device::gpu().unwrap()] {
            let idx = Tensor::from_slice(&device, &index, &[n]).unwrap();
            let mut x = Tensor::zeros(&device, &[50, cols]).unwrap();
            let mut y = Tensor::zeros(&device, &[50, ycols]).unwrap();
            let before = device.stats().dispatches;
            for (lo, hi) in [(0, 120), (120, 300)] {
                let rows = &data[lo * cols..hi * cols];
                let chunk = if palette {
                    let pal = PaletteRows::palette_of(&data).unwrap();
                    Rows::Palette(PaletteRows::pack(&device, rows, cols, &pal).unwrap())
                } else {
                    Rows::F32(Tensor::from_slice(&device, rows, &[hi - lo, cols]).unwrap())
                };
                let t = &targets[lo * ycols..hi * ycols];
                let t = Tensor::from_slice(&device, t, &[hi - lo, ycols]).unwrap();
                chunk
                    .gather_with_targets(&t, lo, &idx, 100, &mut x, &mut y)
                    .unwrap();
            }
            if device.gpu_context().is_some() {
                let per_chunk = if cols % 4 == 0 { 1 } else { 2 };
                assert_eq!(
                    device.stats().dispatches - before,
                    2 * per_chunk,
                    "cols {cols}"
                );
            }
            results.push((x.to_vec().unwrap(), y.to_vec().unwrap()));
        }
        let want_x: Vec<f32> = (100..150)
            .flat_map(|i| {
                let s = index[i] as usize;
                data[s * cols..(s + 1) * cols].to_vec()
            })
            .collect();
        let want_y: Vec<f32> = (100..150)
            .flat_map(|i| {
                let s = index[i] as usize;
                targets[s * ycols..(s + 1) * ycols].to_vec()
            })
            .collect();
        for (x, y) in results {
            assert_eq!(x, want_x, "cols {cols} palette {palette}");
            assert_eq!(y, want_y, "cols {cols} ycols {ycols}");
        }
    }
}
