//! A model's parameters, gradients and optimizer state packed into one GPU buffer each,
//! every tensor a view into it: the optimizer then updates all of them in one dispatch,
//! and a data-parallel exchange moves the gradients in one transfer.

use super::Param;
use crate::device::Device;
use crate::error::{Error, Result};
use crate::tensor::Tensor;

/// The packed buffers of a model on a GPU (none on the CPU, or past one binding).
pub struct Packed {
    /// Every parameter's values, in order, with zeros between them.
    pub(crate) values: Tensor,
    /// Every parameter's gradient, laid out as `values`.
    pub(crate) grads: Tensor,
    /// The optimizer's state slots, laid out as `values` (made at the first step).
    pub(crate) state: Vec<Tensor>,
    /// (first value, values) of each parameter in the packed buffers.
    spans: Vec<(usize, usize)>,
}

impl Packed {
    /// Moves `params`' values into one packed buffer and their gradients into another;
    /// `None` (and the parameters untouched) where packing does not apply.
    pub(crate) fn of(device: &Device, params: &mut [Param]) -> Result<Option<Packed>> {
        let shapes: Vec<&[usize]> = params.iter().map(|p| p.value.shape()).collect();
        let (Some((values, value_views)), Some((grads, grad_views))) = (
            Tensor::packed(device, &shapes)?,
            Tensor::packed(device, &shapes)?,
        ) else {
            return Ok(None);
        };
        let mut spans = Vec::with_capacity(params.len());
        for ((p, mut value), grad) in params.iter_mut().zip(value_views).zip(grad_views) {
            value.copy_from(&p.value)?;
            spans.push((value.packed_offset(), value.len()));
            p.value = value;
            p.grad = grad;
        }
        Ok(Some(Packed {
            values,
            grads,
            state: Vec::new(),
            spans,
        }))
    }

    /// Whether every parameter still lives in the packed buffers.
    pub(crate) fn holds(&self, params: &[Param]) -> bool {
        params.len() == self.spans.len()
            && params
                .iter()
                .all(|p| p.value.shares_buffer(&self.values) && p.grad.shares_buffer(&self.grads))
    }

    /// Makes `slots` packed state buffers unless the parameters' state already lives in
    /// them, keeping the values of any state the parameters hold (a resumed checkpoint's).
    pub(crate) fn ensure_state(&mut self, params: &mut [Param], slots: usize) -> Result<()> {
        let packed = self.state.len() == slots
            && params.iter().all(|p| {
                p.state.len() == slots
                    && p.state
                        .iter()
                        .zip(&self.state)
                        .all(|(s, w)| s.shares_buffer(w))
            });
        if packed {
            return Ok(());
        }
        let device = self.values.device();
        let shapes: Vec<&[usize]> = params.iter().map(|p| p.value.shape()).collect();
        let mut state = Vec::with_capacity(slots);
        let mut views: Vec<Vec<Tensor>> = params.iter().map(|_| Vec::new()).collect();
        for k in 0..slots {
            let (whole, slot_views) = Tensor::packed(&device, &shapes)?
                .ok_or_else(|| Error::arg("optimizer", "packed state past one binding"))?;
            for ((p, mut view), list) in params.iter().zip(slot_views).zip(views.iter_mut()) {
                if let Some(old) = p.state.get(k).filter(|_| p.state.len() == slots) {
                    view.copy_from(old)?;
                }
                list.push(view);
            }
            state.push(whole);
        }
        for (p, list) in params.iter_mut().zip(views) {
            p.state = list;
        }
        self.state = state;
        Ok(())
    }

    /// Values of every parameter, in order, without the padding between them.
    pub(crate) fn unpad(&self, padded: &[f32]) -> Vec<f32> {
        self.spans
            .iter()
            .flat_map(|&(at, n)| padded.get(at..at + n).unwrap_or(&[]))
            .copied()
            .collect()
    }

    /// The packed layout of `flat` (every parameter's values in order), zeros between.
    pub(crate) fn pad(&self, flat: &[f32]) -> Result<Vec<f32>> {
        let mut out = vec![0.0; self.values.len()];
        let mut from = 0;
        for &(at, n) in &self.spans {
            let (dst, src) = (out.get_mut(at..at + n), flat.get(from..from + n));
            let (Some(dst), Some(src)) = (dst, src) else {
                return Err(Error::shape(
                    "packed gradients",
                    "fewer values than parameters",
                ));
            };
            dst.copy_from_slice(src);
            from += n;
        }
        Ok(out)
    }
}
