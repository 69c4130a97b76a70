mod common;
use common::*;
use kiln::ops::gather::gather_rows_into;
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
