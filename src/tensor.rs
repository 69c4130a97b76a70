//! f32 tensors: a row-major shape over a GPU buffer or a host Vec.

use std::sync::Arc;

use crate::device::{Device, GpuContext};
use crate::error::{Error, Result};

/// A GPU buffer that goes back to its device's pool when dropped.
pub(crate) struct GpuBuffer {
    pub(crate) buf: wgpu::Buffer,
    pub(crate) ctx: Arc<GpuContext>,
}

impl Drop for GpuBuffer {
    fn drop(&mut self) {
        self.ctx.release(self.buf.clone());
    }
}

pub(crate) enum Storage {
    Cpu(Vec<f32>),
    Gpu(GpuBuffer),
}

/// An f32 tensor, row-major, on one device.
///
/// Tensors are not `Clone`: a copy on the GPU is a real copy, so it is spelled `try_clone`.
pub struct Tensor {
    shape: Vec<usize>,
    pub(crate) storage: Storage,
}

impl std::fmt::Debug for Tensor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let place = match self.storage {
            Storage::Cpu(_) => "cpu",
            Storage::Gpu(_) => "gpu",
        };
        write!(f, "Tensor({:?}, {place})", self.shape)
    }
}

/// Elements of `shape`, or a `Shape` error when the product overflows usize.
fn numel(op: &str, shape: &[usize]) -> Result<usize> {
    shape
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| {
            Error::shape(
                op,
                format!("shape {shape:?} holds more elements than fit in usize"),
            )
        })
}

/// An empty vector with room for `len` values, or an `OutOfMemory` error where
/// `Vec::with_capacity` would abort the process.
pub(crate) fn host_vec<T>(len: usize, what: &str) -> Result<Vec<T>> {
    let mut v = Vec::new();
    v.try_reserve_exact(len).map_err(|e| Error::OutOfMemory {
        what: what.to_string(),
        size: (len as u64).saturating_mul(std::mem::size_of::<T>() as u64),
        detail: format!("the host allocator refused it ({e})"),
    })?;
    Ok(v)
}

/// `len` copies of `value` on the host; see [`host_vec`].
pub(crate) fn host_filled<T: Clone>(len: usize, value: T, what: &str) -> Result<Vec<T>> {
    let mut v = host_vec(len, what)?;
    v.resize(len, value);
    Ok(v)
}

/// `len` zeros on the host; see [`host_filled`].
pub(crate) fn host_zeros(len: usize, what: &str) -> Result<Vec<f32>> {
    host_filled(len, 0.0, what)
}

impl Tensor {
    /// Uploads `data` with the given shape.
    pub fn from_slice(device: &Device, data: &[f32], shape: &[usize]) -> Result<Tensor> {
        let n = numel("Tensor::from_slice", shape)?;
        if n != data.len() {
            return Err(Error::shape(
                "Tensor::from_slice",
                format!(
                    "shape {shape:?} holds {n} values but {} were given",
                    data.len()
                ),
            ));
        }
        let storage = match device {
            Device::Cpu => {
                let mut v = host_vec(n, "Tensor::from_slice")?;
                v.extend_from_slice(data);
                Storage::Cpu(v)
            }
            Device::Gpu(ctx) => {
                let buf = ctx.alloc(data.len())?;
                ctx.upload(&buf, bytemuck::cast_slice(data))?;
                Storage::Gpu(GpuBuffer {
                    buf,
                    ctx: ctx.clone(),
                })
            }
        };
        Ok(Tensor {
            shape: shape.to_vec(),
            storage,
        })
    }

    /// A tensor of zeros.
    pub fn zeros(device: &Device, shape: &[usize]) -> Result<Tensor> {
        let t = Self::uninit(device, shape)?;
        if let Storage::Gpu(g) = &t.storage {
            g.ctx.clear(&g.buf);
        }
        Ok(t)
    }

    /// A tensor filled with `value`.
    pub fn full(device: &Device, shape: &[usize], value: f32) -> Result<Tensor> {
        let n = numel("Tensor::full", shape)?;
        if let Device::Gpu(ctx) = device {
            // Refuse a tensor over the limits before building its host copy.
            ctx.check_size("tensor", n)?;
        }
        Self::from_slice(device, &host_filled(n, value, "Tensor::full")?, shape)
    }

    /// A tensor whose contents are whatever the buffer held (zeros on the CPU).
    ///
    /// For outputs that a kernel overwrites completely.
    pub fn uninit(device: &Device, shape: &[usize]) -> Result<Tensor> {
        let n = numel("Tensor::uninit", shape)?;
        let storage = match device {
            Device::Cpu => Storage::Cpu(host_zeros(n, "Tensor::uninit")?),
            Device::Gpu(ctx) => Storage::Gpu(GpuBuffer {
                buf: ctx.alloc(n)?,
                ctx: ctx.clone(),
            }),
        };
        Ok(Tensor {
            shape: shape.to_vec(),
            storage,
        })
    }

    /// The shape.
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        // Every constructor and `reshape` checked that this product fits in usize.
        self.shape.iter().product()
    }

    /// True when the tensor has no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The device the tensor lives on.
    pub fn device(&self) -> Device {
        match &self.storage {
            Storage::Cpu(_) => Device::Cpu,
            Storage::Gpu(g) => Device::Gpu(g.ctx.clone()),
        }
    }

    /// (rows, cols) of a 2-D tensor; a 1-D tensor is one row.
    pub fn dims2(&self, op: &str) -> Result<(usize, usize)> {
        match self.shape.as_slice() {
            [n] => Ok((1, *n)),
            [r, c] => Ok((*r, *c)),
            s => Err(Error::shape(
                op,
                format!("expected a 1-D or 2-D tensor, got shape {s:?}"),
            )),
        }
    }

    /// The same data under another shape with as many elements.
    pub fn reshape(mut self, shape: &[usize]) -> Result<Tensor> {
        if numel("Tensor::reshape", shape)? != self.len() {
            return Err(Error::shape(
                "Tensor::reshape",
                format!("cannot view {:?} as {shape:?}", self.shape),
            ));
        }
        self.shape = shape.to_vec();
        Ok(self)
    }

    /// Downloads the values (blocks until the GPU has produced them).
    pub fn to_vec(&self) -> Result<Vec<f32>> {
        pollster::block_on(self.to_vec_async())
    }

    /// Downloads the values without blocking the async executor's thread on the web.
    pub async fn to_vec_async(&self) -> Result<Vec<f32>> {
        match &self.storage {
            Storage::Cpu(v) => Ok(v.clone()),
            Storage::Gpu(g) => {
                let bytes = g.ctx.read(&g.buf, self.len() as u64 * 4).await?;
                Ok(bytemuck::pod_collect_to_vec(&bytes))
            }
        }
    }

    /// Downloads several tensors of one device, concatenated: one wait on a GPU.
    pub fn read_many(tensors: &[&Tensor]) -> Result<Vec<f32>> {
        let mismatch = Error::DeviceMismatch {
            op: "Tensor::read_many",
        };
        let Some(first) = tensors.first() else {
            return Ok(Vec::new());
        };
        let Storage::Gpu(g0) = &first.storage else {
            let hosts: Option<Vec<&[f32]>> = tensors.iter().map(|t| t.host()).collect();
            return Ok(hosts.ok_or(mismatch)?.concat());
        };
        let parts = tensors
            .iter()
            .map(|t| match &t.storage {
                Storage::Gpu(g) if Arc::ptr_eq(&g.ctx, &g0.ctx) => {
                    Some((&g.buf, t.len() as u64 * 4))
                }
                _ => None,
            })
            .collect::<Option<Vec<_>>>()
            .ok_or(mismatch)?;
        let bytes = pollster::block_on(g0.ctx.read_parts(&parts))?;
        Ok(bytemuck::pod_collect_to_vec(&bytes))
    }

    /// Overwrites the values in place (same number of elements).
    pub fn write(&mut self, data: &[f32]) -> Result<()> {
        if data.len() != self.len() {
            return Err(Error::shape(
                "Tensor::write",
                format!(
                    "tensor {:?} holds {} values, got {}",
                    self.shape,
                    self.len(),
                    data.len()
                ),
            ));
        }
        match &mut self.storage {
            Storage::Cpu(v) => v.copy_from_slice(data),
            Storage::Gpu(g) => g.ctx.upload(&g.buf, bytemuck::cast_slice(data))?,
        }
        Ok(())
    }

    /// Copies the values of `src` (same number of elements, same device) into `self`.
    pub fn copy_from(&mut self, src: &Tensor) -> Result<()> {
        if src.len() != self.len() {
            return Err(Error::shape(
                "Tensor::copy_from",
                format!("{:?} into {:?}", src.shape, self.shape),
            ));
        }
        match (&mut self.storage, &src.storage) {
            (Storage::Cpu(d), Storage::Cpu(s)) => d.copy_from_slice(s),
            (Storage::Gpu(d), Storage::Gpu(s)) if Arc::ptr_eq(&d.ctx, &s.ctx) => {
                d.ctx.copy(&s.buf, &d.buf, src.len() as u64 * 4)
            }
            _ => {
                return Err(Error::DeviceMismatch {
                    op: "Tensor::copy_from",
                })
            }
        }
        Ok(())
    }

    /// A copy of the tensor on the same device.
    pub fn try_clone(&self) -> Result<Tensor> {
        let mut t = Tensor::uninit(&self.device(), &self.shape)?;
        t.copy_from(self)?;
        Ok(t)
    }

    /// A copy of the tensor on `device`.
    pub fn to_device(&self, device: &Device) -> Result<Tensor> {
        if self.device().same(device) {
            return self.try_clone();
        }
        Tensor::from_slice(device, &self.to_vec()?, &self.shape)
    }

    /// The host values of a CPU tensor.
    pub(crate) fn host(&self) -> Option<&[f32]> {
        match &self.storage {
            Storage::Cpu(v) => Some(v),
            Storage::Gpu(_) => None,
        }
    }

    /// The host values of a CPU tensor, writable.
    pub(crate) fn host_mut(&mut self) -> Option<&mut [f32]> {
        match &mut self.storage {
            Storage::Cpu(v) => Some(v),
            Storage::Gpu(_) => None,
        }
    }

    /// The GPU buffer of a GPU tensor.
    pub(crate) fn buffer(&self) -> Option<&wgpu::Buffer> {
        match &self.storage {
            Storage::Gpu(g) => Some(&g.buf),
            Storage::Cpu(_) => None,
        }
    }
}
