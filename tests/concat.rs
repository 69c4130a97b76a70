mod common;
use common::*;
use kiln::ops::concat::{concat_cols_into, split_cols_into};
use kiln::{Device, Tensor};

#[test]
fn concat_and_split_match_the_cpu_reference_on_awkward_shapes() {
    for &rows in &[1usize, 3, 17, 255] {
        for &(a, b) in &[(1usize, 3usize), (3, 17), (17, 1), (255, 3)] {
            let (xa, xb) = (random(rows * a, 1), random(rows * b, 2));
            let want: Vec<f32> = (0..rows)
                .flat_map(|r| {
                    let ra = &xa[r * a..(r + 1) * a];
                    ra.iter()
                        .chain(&xb[r * b..(r + 1) * b])
                        .copied()
                        .collect::<Vec<_>>()
                })
                .collect();
            for device in [Device::cpu(), gpu()] {
                let ta = Tensor::from_slice(&device, &xa, &[rows, a]).unwrap();
                let tb = Tensor::from_slice(&device, &xb, &[rows, b]).unwrap();
                let mut whole = Tensor::zeros(&device, &[rows, a + b]).unwrap();
                concat_cols_into(&ta, &mut whole, 0).unwrap();
                concat_cols_into(&tb, &mut whole, a).unwrap();
                assert_eq!(whole.to_vec().unwrap(), want, "{rows}x({a}+{b}) {device:?}");
                let mut back = Tensor::zeros(&device, &[rows, b]).unwrap();
                split_cols_into(&whole, a, &mut back).unwrap();
                assert_eq!(back.to_vec().unwrap(), xb, "{rows}x({a}+{b}) {device:?}");
            }
        }
    }
}

#[test]
fn concat_refuses_blocks_outside_the_rows() {
    let d = Device::cpu();
    let part = Tensor::zeros(&d, &[2, 3]).unwrap();
    let mut whole = Tensor::zeros(&d, &[2, 4]).unwrap();
    assert!(matches!(
        concat_cols_into(&part, &mut whole, 2),
        Err(kiln::Error::Shape { .. })
    ));
    let mut other = Tensor::zeros(&d, &[3, 4]).unwrap();
    assert!(matches!(
        concat_cols_into(&part, &mut other, 0),
        Err(kiln::Error::Shape { .. })
    ));
}
