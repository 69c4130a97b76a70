//! f32 tensors: a row-major shape over a GPU buffer or a host Vec.

use std::sync::Arc;

use crate::device::{Device, GpuContext, Span};
use crate::error::{Error, Result};

/// A GPU buffer that goes back to its device's pool when the last tensor in it is dropped.
pub(crate) struct GpuMemory {
    buf: wgpu::Buffer,
    ctx: Arc<GpuContext>,
}

impl Drop for GpuMemory {
    fn drop(&mut self) {
        self.ctx.release(self.buf.clone());
    }
}

/// A GPU tensor's place: a buffer of its own, or its share of a packed one (see
/// [`Tensor::packed`]).
pub(crate) struct GpuBuffer {
    memory: Arc<GpuMemory>,
    /// The first byte; a tensor that owns its buffer starts at 0 and binds all of it.
    offset: u64,
    shared: bool,
}

impl GpuBuffer {
    fn own(buf: wgpu::Buffer, ctx: &Arc<GpuContext>) -> GpuBuffer {
        GpuBuffer {
            memory: Arc::new(GpuMemory {
                buf,
                ctx: ctx.clone(),
            }),
            offset: 0,
            shared: false,
        }
    }

    pub(crate) fn ctx(&self) -> &Arc<GpuContext> {
        &self.memory.ctx
    }

    /// The bytes of `len` values this tensor occupies.
    fn span(&self, len: usize) -> Span<'_> {
        Span {
            buf: &self.memory.buf,
            offset: self.offset,
            size: self.shared.then_some(len as u64 * 4),
        }
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
                ctx.upload(Span::whole(&buf), bytemuck::cast_slice(data))?;
                Storage::Gpu(GpuBuffer::own(buf, ctx))
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
            g.ctx().clear(g.span(t.len()));
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
            Device::Gpu(ctx) => Storage::Gpu(GpuBuffer::own(ctx.alloc(n)?, ctx)),
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
            Storage::Gpu(g) => Device::Gpu(g.ctx().clone()),
        }
    }

    /// (rows, cols) of the tensor as a matrix over its last axis: a 1-D tensor is one
    /// row, and the leading axes of a 3-D or larger one are folded into rows (a batch of
    /// [T, D] sequences is B * T rows of D), as PyTorch's row-wise ops act on the last axis.
    pub fn dims2(&self, op: &str) -> Result<(usize, usize)> {
        match self.shape.as_slice() {
            [n] => Ok((1, *n)),
            [lead @ .., c] if !lead.is_empty() => Ok((lead.iter().product(), *c)),
            s => Err(Error::shape(
                op,
                format!("expected a tensor of at least one axis, got shape {s:?}"),
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
                let bytes = g
                    .ctx()
                    .read(g.span(self.len()), self.len() as u64 * 4)
                    .await?;
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
                Storage::Gpu(g) if Arc::ptr_eq(g.ctx(), g0.ctx()) => {
                    Some((g.span(t.len()), t.len() as u64 * 4))
                }
                _ => None,
            })
            .collect::<Option<Vec<_>>>()
            .ok_or(mismatch)?;
        let bytes = pollster::block_on(g0.ctx().read_parts(&parts))?;
        Ok(bytemuck::pod_collect_to_vec(&bytes))
    }

    /// Starts downloading parts of tensors of one device, concatenated: each
    /// `(tensor, range)` is that range of the tensor's values. The work recorded so far
    /// is submitted and nothing waits until [`Readback::wait`], so the host can work
    /// while the GPU runs (and work submitted later runs on).
    pub(crate) fn start_read_ranges(
        parts: &[(&Tensor, std::ops::Range<usize>)],
    ) -> Result<Readback> {
        let mismatch = || Error::DeviceMismatch {
            op: "Tensor::start_read_ranges",
        };
        if let Some((t, r)) = parts
            .iter()
            .find(|(t, r)| r.start > r.end || r.end > t.len())
        {
            return Err(Error::shape(
                "Tensor::start_read_ranges",
                format!("range {r:?} of a tensor of {} values", t.len()),
            ));
        }
        let Some(Storage::Gpu(g0)) = parts.first().map(|(t, _)| &t.storage) else {
            let mut out = Vec::new();
            for (t, r) in parts {
                out.extend_from_slice(t.host().ok_or_else(mismatch)?.get(r.clone()).unwrap_or(&[]));
            }
            return Ok(Readback::Host(out));
        };
        let spans = parts
            .iter()
            .map(|(t, r)| match &t.storage {
                Storage::Gpu(g) if Arc::ptr_eq(g.ctx(), g0.ctx()) => {
                    let whole = g.span(t.len());
                    Some((
                        Span {
                            offset: whole.offset + r.start as u64 * 4,
                            size: Some(r.len() as u64 * 4),
                            ..whole
                        },
                        r.len() as u64 * 4,
                    ))
                }
                _ => None,
            })
            .collect::<Option<Vec<_>>>()
            .ok_or_else(mismatch)?;
        let read = g0.ctx().start_read_parts(&spans)?;
        Ok(Readback::Gpu(g0.ctx().clone(), read))
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
            Storage::Gpu(g) => g
                .ctx()
                .upload(g.span(data.len()), bytemuck::cast_slice(data))?,
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
            (Storage::Gpu(d), Storage::Gpu(s)) if Arc::ptr_eq(d.ctx(), s.ctx()) => {
                let n = src.len();
                d.ctx().copy(s.span(n), d.span(n), n as u64 * 4)
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

    /// Where a GPU tensor lives.
    pub(crate) fn buffer(&self) -> Option<Span<'_>> {
        match &self.storage {
            Storage::Gpu(g) => Some(g.span(self.len())),
            Storage::Cpu(_) => None,
        }
    }

    /// Where a tensor made by [`Tensor::packed`] starts in its buffer, in values.
    pub(crate) fn packed_offset(&self) -> usize {
        match &self.storage {
            Storage::Gpu(g) => (g.offset / 4) as usize,
            Storage::Cpu(_) => 0,
        }
    }

    /// Whether two tensors occupy the same GPU buffer (one packed buffer, say).
    pub fn shares_buffer(&self, other: &Tensor) -> bool {
        match (&self.storage, &other.storage) {
            (Storage::Gpu(a), Storage::Gpu(b)) => Arc::ptr_eq(&a.memory, &b.memory),
            _ => false,
        }
    }

    /// Tensors of these shapes packed into one GPU buffer, each starting at an offset
    /// the adapter can bind, zeros between them: (the whole buffer as one flat tensor,
    /// the tensors). `None` on the CPU, or when the buffer would exceed one binding.
    /// Values start as zeros.
    pub fn packed(device: &Device, shapes: &[&[usize]]) -> Result<Option<(Tensor, Vec<Tensor>)>> {
        let Device::Gpu(ctx) = device else {
            return Ok(None);
        };
        let align = (ctx.limits.min_storage_buffer_offset_alignment as usize / 4).max(1);
        let mut starts = Vec::with_capacity(shapes.len());
        let mut total = 0usize;
        for shape in shapes {
            starts.push(total);
            let n = numel("Tensor::packed", shape)?;
            total = total
                .checked_add(n.div_ceil(align) * align)
                .ok_or_else(|| Error::shape("Tensor::packed", "more values than usize holds"))?;
        }
        if total == 0 || total > device.max_tensor_len() {
            return Ok(None);
        }
        let whole = Tensor::zeros(device, &[total])?;
        let Storage::Gpu(g) = &whole.storage else {
            return Ok(None);
        };
        let views = shapes
            .iter()
            .zip(starts)
            .map(|(shape, start)| Tensor {
                shape: shape.to_vec(),
                storage: Storage::Gpu(GpuBuffer {
                    memory: g.memory.clone(),
                    offset: start as u64 * 4,
                    shared: true,
                }),
            })
            .collect();
        Ok(Some((whole, views)))
    }
}

/// A download started by [`Tensor::start_read_ranges`].
pub(crate) enum Readback {
    /// Host tensors: the values, copied at once.
    Host(Vec<f32>),
    /// GPU tensors: the copies are submitted, their mapping pending.
    Gpu(Arc<GpuContext>, crate::device::PendingRead),
}

impl Readback {
    /// Waits for the download (only for it: not for work submitted after it).
    pub(crate) fn wait(self) -> Result<Vec<f32>> {
        match self {
            Readback::Host(v) => Ok(v),
            Readback::Gpu(ctx, read) => {
                let bytes = pollster::block_on(ctx.finish_read(read))?;
                Ok(bytemuck::pod_collect_to_vec(&bytes))
            }
        }
    }
}
