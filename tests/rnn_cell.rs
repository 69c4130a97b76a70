//! The recurrent op (`ops::rnn_cell`): its GPU kernels against its CPU reference, forward
//! and backpropagation through time, LSTM and GRU, returning sequences or the last state,
//! on awkward shapes.
mod common;
use common::*;
use kiln::ops::rnn_cell::{Cell, Recurrence, RnnGrads, RnnWeights};
use kiln::{Device, Tensor};

/// y, dx, dw_ih, dw_hh, db_ih, db_hh of one pass on `device` from seeded values.
fn pass(op: Recurrence, dims: [usize; 4], device: &Device) -> Vec<Tensor> {
    let [b, t, d, h] = dims;
    let g = op.cell.gates() * h;
    let up = |s: &[usize], seed: u64| {
        let n = s.iter().product();
        Tensor::from_slice(device, &random(n, seed), s).unwrap()
    };
    let mut xv = random(b * t * d, 1);
    if let Some(m) = op.mask_value {
        pad_steps(&mut xv, [b, t, d], m);
    }
    let x = Tensor::from_slice(device, &xv, &[b, t, d]).unwrap();
    let (w_ih, w_hh, b_ih, b_hh) = (up(&[g, d], 2), up(&[g, h], 3), up(&[g], 4), up(&[g], 5));
    let y_shape = if op.return_sequences {
        vec![b, t, h]
    } else {
        vec![b, h]
    };
    let dy = up(&y_shape, 6);
    let nan = |s: &[usize]| Tensor::full(device, s, f32::NAN).unwrap();
    let mut y = nan(&y_shape);
    let mut work = op.work(device, b, t, d, h).unwrap();
    let w = RnnWeights {
        w_ih: &w_ih,
        b_ih: &b_ih,
        w_hh: &w_hh,
        b_hh: &b_hh,
    };
    op.forward_into(&x, w, &mut work, &mut y).unwrap();
    let mut out = vec![
        y,
        nan(&[b, t, d]),
        nan(&[g, d]),
        nan(&[g, h]),
        nan(&[g]),
        nan(&[g]),
    ];
    let [_, dx, gw_ih, gw_hh, gb_ih, gb_hh] = out.as_mut_slice() else {
        unreachable!()
    };
    let grads = RnnGrads {
        w_ih: gw_ih,
        b_ih: gb_ih,
        w_hh: gw_hh,
        b_hh: gb_hh,
    };
    op.backward_into(&x, &dy, w, &mut work, grads, Some(dx))
        .unwrap();
    out
}

#[test]
fn gpu_matches_cpu_reference_on_awkward_shapes() {
    let names = ["y", "dx", "dw_ih", "dw_hh", "db_ih", "db_hh"];
    // [batch, steps, inputs, hidden]
    let shapes = [
        [1, 1, 1, 1],
        [3, 3, 5, 3],
        [2, 17, 1, 17],
        [5, 3, 5, 33],
        [1, 17, 5, 1],
    ];
    for cell in [Cell::Lstm, Cell::Gru] {
        let options = [
            (false, None),
            (true, None),
            (false, Some(0.0)),
            (true, Some(0.5)),
        ];
        for (return_sequences, mask_value) in options {
            let op = Recurrence {
                cell,
                return_sequences,
                mask_value,
            };
            for dims in shapes {
                let cpu = pass(op, dims, &Device::cpu());
                let gpu = pass(op, dims, &gpu());
                for ((g, c), name) in gpu.iter().zip(&cpu).zip(names) {
                    let what = format!("{op:?} {dims:?} {name}");
                    assert_same(g, c, 1e-4, 1e-5, &what);
                }
            }
        }
    }
}

#[test]
fn mismatched_operands_are_typed_errors() {
    let d = Device::cpu();
    let op = Recurrence {
        cell: Cell::Lstm,
        return_sequences: false,
        mask_value: None,
    };
    let t = |s: &[usize]| Tensor::zeros(&d, s).unwrap();
    let (x, w_ih, w_hh, b) = (t(&[2, 3, 4]), t(&[8, 4]), t(&[8, 2]), t(&[8]));
    let mut work = op.work(&d, 2, 3, 4, 2).unwrap();
    let w = RnnWeights {
        w_ih: &w_ih,
        b_ih: &b,
        w_hh: &w_hh,
        b_hh: &b,
    };
    assert!(op.forward_into(&x, w, &mut work, &mut t(&[2, 2])).is_ok());
    // The wrong output shape, a GRU's weights, and work made for another batch.
    assert!(op
        .forward_into(&x, w, &mut work, &mut t(&[2, 3, 2]))
        .is_err());
    let gru = Recurrence {
        cell: Cell::Gru,
        ..op
    };
    assert!(gru.forward_into(&x, w, &mut work, &mut t(&[2, 2])).is_err());
    let mut other = op.work(&d, 3, 3, 4, 2).unwrap();
    assert!(op.forward_into(&x, w, &mut other, &mut t(&[2, 2])).is_err());
}

#[test]
fn a_64_step_pass_is_recorded_without_readback_in_few_dispatches() {
    // A device of its own, so other tests' dispatches do not show in its counters.
    let dev = Device::gpu().unwrap();
    let [b, t, d, h] = [4, 64, 8, 16];
    for cell in [Cell::Lstm, Cell::Gru] {
        let op = Recurrence {
            cell,
            return_sequences: false,
            mask_value: None,
        };
        let g = cell.gates() * h;
        let z = |s: &[usize]| Tensor::zeros(&dev, s).unwrap();
        let (x, w_ih, w_hh, bias) = (z(&[b, t, d]), z(&[g, d]), z(&[g, h]), z(&[g]));
        let (dy, mut y, mut dx) = (z(&[b, h]), z(&[b, h]), z(&[b, t, d]));
        let mut gr = [z(&[g, d]), z(&[g, h]), z(&[g]), z(&[g])];
        let mut work = op.work(&dev, b, t, d, h).unwrap();
        let w = RnnWeights {
            w_ih: &w_ih,
            b_ih: &bias,
            w_hh: &w_hh,
            b_hh: &bias,
        };
        let mut counts = Vec::new();
        // The second pass is counted: the first may time matmul kernels.
        for _ in 0..2 {
            let before = dev.stats();
            op.forward_into(&x, w, &mut work, &mut y).unwrap();
            let mid = dev.stats();
            let [gw_ih, gw_hh, gb_ih, gb_hh] = &mut gr;
            let grads = RnnGrads {
                w_ih: gw_ih,
                b_ih: gb_ih,
                w_hh: gw_hh,
                b_hh: gb_hh,
            };
            op.backward_into(&x, &dy, w, &mut work, grads, Some(&mut dx))
                .unwrap();
            dev.synchronize().unwrap();
            let after = dev.stats();
            assert_eq!(after.bytes_read, before.bytes_read, "{cell:?}: no readback");
            counts = vec![
                mid.dispatches - before.dispatches,
                after.dispatches - mid.dispatches,
            ];
        }
        println!(
            "{cell:?} T = {t}: forward {} dispatches, backward {}",
            counts[0], counts[1]
        );
        assert!(counts[0] <= t as u64 + 2, "{cell:?} forward: {counts:?}");
        assert!(counts[1] <= t as u64 + 10, "{cell:?} backward: {counts:?}");
    }
}
