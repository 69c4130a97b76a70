//! Inverted dropout with a counter-based mask: the same (seed, index) gives the same
//! mask on every device and in the backward pass.

use super::{device_of, grid, host, launch, same_shape, WG};
use crate::device::{Device, Kernel};
use crate::error::{Error, Result};
use crate::tensor::Tensor;
use bytemuck::{Pod, Zeroable};

pub(super) const DROPOUT: Kernel = Kernel {
    file: "dropout.wgsl",
    source: include_str!("../../shaders/dropout.wgsl"),
    entry: "dropout",
    inputs: 1,
    outputs: 1,
    bounds_checks: true,
};

/// The uniform block of shaders/dropout.wgsl, field for field.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub(super) struct Params {
    pub(super) n: u32,
    pub(super) seed: u32,
    pub(super) rate: f32,
    pub(super) scale: f32,
}

/// The hash the shader uses (see shaders/dropout.wgsl).
fn mix(v: u32) -> u32 {
    let mut h = v;
    h ^= h >> 16;
    h = h.wrapping_mul(0x21f0_aaad);
    h ^= h >> 15;
    h = h.wrapping_mul(0x735a_2d97);
    h ^= h >> 15;
    h
}

/// True when element `i` is kept for this `seed` and `rate`.
pub fn keep(seed: u32, rate: f32, i: u32) -> bool {
    let u = (mix(i ^ mix(seed)) >> 8) as f32 * (1.0 / 16_777_216.0);
    u >= rate
}

/// `out = x * mask / (1 - rate)`. The backward pass is the same call on the gradient.
pub fn dropout_into(x: &Tensor, rate: f32, seed: u32, out: &mut Tensor) -> Result<()> {
    if !(0.0..1.0).contains(&rate) {
        return Err(Error::arg(
            "dropout rate",
            format!("{rate} is not in [0, 1)"),
        ));
    }
    same_shape("dropout", x, out)?;
    let scale = 1.0 / (1.0 - rate);
    match device_of("dropout", &[x, out])? {
        Device::Cpu => {
            let src = host(x);
            for (i, (o, v)) in out
                .host_mut()
                .unwrap_or(&mut [])
                .iter_mut()
                .zip(src)
                .enumerate()
            {
                *o = if keep(seed, rate, i as u32) {
                    v * scale
                } else {
                    0.0
                };
            }
            Ok(())
        }
        Device::Gpu(ctx) => {
            let n = x.len();
            let params = Params {
                n: n as u32,
                seed,
                rate,
                scale,
            };
            launch(&ctx, &DROPOUT, &[], &params, &[x, out], grid(n, WG))
        }
    }
}
