//! The embedding ops (token lookup, learned positions, their gradients into the tables):
//! GPU kernels against the CPU reference on awkward shapes, gradients that repeat bit for
//! bit, and how each path treats an id outside the vocabulary.

mod common;

use common::{assert_close, both, gpu, random};
use kiln::ops::embedding::{
    embedding_grad_into, embedding_into, positional_grad_into, positional_into, TokenSort,
};
use kiln::{Device, Error, Tensor};

/// `dy` [.., dim] into `dtable` [rows, dim], through a token sort of its own.
fn grad(ids: &Tensor, dy: &Tensor, dtable: &mut Tensor) -> kiln::Result<()> {
    let rows = dtable.shape()[0];
    let [mut offsets, mut positions] = TokenSort::buffers(&ids.device(), rows, ids.len())?;
    let sort = TokenSort {
        offsets: &mut offsets,
        positions: &mut positions,
    };
    embedding_grad_into(ids, dy, dtable, sort)
}

/// `n` ids in 0..vocab, with repeats (a few ids many times, so the gradient sums rows).
fn ids(n: usize, vocab: usize, seed: u64) -> Vec<f32> {
    random(n, seed)
        .iter()
        .map(|v| (((v + 1.0) * 0.5 * vocab as f32) as usize).min(vocab - 1) as f32)
        .collect()
}

#[test]
fn lookups_and_their_gradients_match_the_cpu() {
    for (n, vocab, dim) in [(1, 1, 1), (3, 17, 5), (17, 3, 1), (255, 65, 7)] {
        let what = format!("{n} tokens, vocab {vocab}, dim {dim}");
        let id = ids(n, vocab, n as u64);
        let (ic, ig) = both(&id, &[n]);
        let (tc, tg) = both(&random(vocab * dim, 2), &[vocab, dim]);
        let mut yc = Tensor::zeros(&Device::cpu(), &[n, dim]).unwrap();
        let mut yg = common::nan_gpu(&[n, dim]);
        embedding_into(&ic, &tc, &mut yc).unwrap();
        embedding_into(&ig, &tg, &mut yg).unwrap();
        let want = yc.to_vec().unwrap();
        assert_eq!(yg.to_vec().unwrap(), want, "lookup {what}");
        // Each output row is its token's table row.
        let table = tc.to_vec().unwrap();
        for (t, &i) in id.iter().enumerate() {
            let r = i as usize;
            assert_eq!(want[t * dim..(t + 1) * dim], table[r * dim..(r + 1) * dim]);
        }

        let (dc, dg) = both(&random(n * dim, 3), &[n, dim]);
        let mut gc = Tensor::zeros(&Device::cpu(), &[vocab, dim]).unwrap();
        let mut gg = common::nan_gpu(&[vocab, dim]);
        grad(&ic, &dc, &mut gc).unwrap();
        grad(&ig, &dg, &mut gg).unwrap();
        let first = gg.to_vec().unwrap();
        assert_close(
            &first,
            &gc.to_vec().unwrap(),
            1e-5,
            1e-6,
            &format!("grad {what}"),
        );
        // Again, through sort buffers left holding another batch's values (as a step's
        // scratch is): the same bits.
        let mut offsets = Tensor::full(&gpu(), &[vocab + 1], 3.0).unwrap();
        let mut positions = Tensor::full(&gpu(), &[n], 1e9).unwrap();
        let sort = TokenSort {
            offsets: &mut offsets,
            positions: &mut positions,
        };
        embedding_grad_into(&ig, &dg, &mut gg, sort).unwrap();
        let again: Vec<u32> = gg.to_vec().unwrap().iter().map(|v| v.to_bits()).collect();
        let first: Vec<u32> = first.iter().map(|v| v.to_bits()).collect();
        assert_eq!(again, first, "the same bits on a second run, {what}");
    }
}

#[test]
fn a_batch_of_sequences_looks_up_every_position() {
    // [batch 3, T 5] ids into a [7, 4] table: [3, 5, 4] out, and the gradient of a sum
    // of all outputs counts each token's uses.
    let (b, t, vocab, dim) = (3, 5, 7, 4);
    let id = ids(b * t, vocab, 9);
    let (ic, ig) = both(&id, &[b, t]);
    let (_, tg) = both(&random(vocab * dim, 4), &[vocab, dim]);
    let mut y = common::nan_gpu(&[b, t, dim]);
    embedding_into(&ig, &tg, &mut y).unwrap();
    assert!(y.to_vec().unwrap().iter().all(|v| v.is_finite()));
    let ones = Tensor::full(&gpu(), &[b, t, dim], 1.0).unwrap();
    let mut g = common::nan_gpu(&[vocab, dim]);
    grad(&ig, &ones, &mut g).unwrap();
    let g = g.to_vec().unwrap();
    for r in 0..vocab {
        let uses = id.iter().filter(|&&i| i as usize == r).count() as f32;
        assert_eq!(g[r * dim..(r + 1) * dim], vec![uses; dim][..], "row {r}");
    }
    drop(ic);
}

#[test]
fn ids_outside_the_vocabulary_are_errors_on_the_cpu_and_clamped_on_the_gpu() {
    let (tc, tg) = both(&random(3 * 2, 5), &[3, 2]);
    for bad in [3.0, -1.0, 1.5, f32::NAN] {
        let ic = Tensor::from_slice(&Device::cpu(), &[0.0, bad], &[2]).unwrap();
        let mut y = Tensor::zeros(&Device::cpu(), &[2, 2]).unwrap();
        let err = embedding_into(&ic, &tc, &mut y).unwrap_err();
        assert!(matches!(err, Error::InvalidArgument { .. }), "{bad}: {err}");
        let mut g = Tensor::zeros(&Device::cpu(), &[3, 2]).unwrap();
        let dy = Tensor::zeros(&Device::cpu(), &[2, 2]).unwrap();
        assert!(grad(&ic, &dy, &mut g).is_err(), "{bad}");
    }
    // The GPU cannot report errors: 7 reads the last row, -1 the first, 1.5 row 1.
    let table = tc.to_vec().unwrap();
    let ig = Tensor::from_slice(&gpu(), &[7.0, -1.0, 1.5], &[3]).unwrap();
    let mut y = common::nan_gpu(&[3, 2]);
    embedding_into(&ig, &tg, &mut y).unwrap();
    let want: Vec<f32> = [2, 0, 1]
        .iter()
        .flat_map(|&r| table[r * 2..r * 2 + 2].to_vec())
        .collect();
    assert_eq!(y.to_vec().unwrap(), want);
}

#[test]
fn positions_and_their_gradients_match_the_cpu() {
    for (b, t, max, dim) in [(1, 1, 1, 1), (3, 5, 8, 3), (17, 17, 17, 2), (2, 3, 255, 5)] {
        let what = format!("batch {b}, T {t}, max {max}, dim {dim}");
        let (xc, xg) = both(&random(b * t * dim, 6), &[b, t, dim]);
        let (pc, pg) = both(&random(max * dim, 7), &[max, dim]);
        let mut yc = Tensor::zeros(&Device::cpu(), &[b, t, dim]).unwrap();
        let mut yg = common::nan_gpu(&[b, t, dim]);
        positional_into(&xc, &pc, &mut yc).unwrap();
        positional_into(&xg, &pg, &mut yg).unwrap();
        let want = yc.to_vec().unwrap();
        assert_eq!(yg.to_vec().unwrap(), want, "forward {what}");
        let (x, p) = (xc.to_vec().unwrap(), pc.to_vec().unwrap());
        for (i, w) in want.iter().enumerate() {
            assert_eq!(*w, x[i] + p[i % (t * dim)], "forward {what} at {i}");
        }
        let (dc, dg) = both(&random(b * t * dim, 8), &[b, t, dim]);
        let mut gc = Tensor::zeros(&Device::cpu(), &[max, dim]).unwrap();
        let mut gg = common::nan_gpu(&[max, dim]);
        positional_grad_into(&dc, &mut gc).unwrap();
        positional_grad_into(&dg, &mut gg).unwrap();
        let gcv = gc.to_vec().unwrap();
        assert_close(
            &gg.to_vec().unwrap(),
            &gcv,
            1e-5,
            1e-6,
            &format!("grad {what}"),
        );
        assert!(
            gcv[t * dim..].iter().all(|&v| v == 0.0),
            "unused positions {what}"
        );
    }
    let (xc, _) = both(&random(2 * 4 * 3, 1), &[2, 4, 3]);
    let (pc, _) = both(&random(3 * 3, 1), &[3, 3]);
    let mut y = Tensor::zeros(&Device::cpu(), &[2, 4, 3]).unwrap();
    let err = positional_into(&xc, &pc, &mut y).unwrap_err();
    assert!(
        matches!(err, Error::Shape { .. }),
        "4 positions in a table of 3: {err}"
    );
}
