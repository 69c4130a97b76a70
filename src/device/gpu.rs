//! The GPU context: wgpu device and queue, pipeline and bind-group caches,
//! a buffer pool, and the pending command encoder that ops record into.

use std::cell::Cell;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use super::precompile::Precompiler;
use crate::error::{Error, Result};

/// A compute kernel: one entry point of one WGSL file, specialised by override constants.
///
/// Bindings follow one convention so layouts can be shared: binding 0 is a uniform
/// with the kernel's parameters (dynamic offset), then `inputs` read-only storage
/// buffers, then `outputs` read-write storage buffers.
#[derive(Clone, Copy)]
pub struct Kernel {
    /// Name of the shader file, for the cache key and error messages.
    pub file: &'static str,
    /// WGSL source.
    pub source: &'static str,
    /// Entry point.
    pub entry: &'static str,
    /// Number of read-only storage bindings.
    pub inputs: u32,
    /// Number of read-write storage bindings.
    pub outputs: u32,
    /// Whether naga guards every buffer access. Only kernels whose every index is
    /// clamped or guarded in the WGSL itself turn this off (the matmuls, where the
    /// checks cost about a quarter of the throughput on lavapipe).
    pub bounds_checks: bool,
}

/// Largest parameter block a kernel may take, in bytes.
pub(super) const PARAM_BYTES: u64 = 64;
/// Dispatches per submission before the uniform arena is full and the device flushes.
const ARENA_SLOTS: u64 = 1024;

thread_local! {
    /// Set while this thread rehearses work (see [`GpuContext::rehearse`]).
    static REHEARSING: Cell<bool> = const { Cell::new(false) };
}

/// Ends a rehearsal when dropped, however its closure returns.
struct Rehearsal;

impl Drop for Rehearsal {
    fn drop(&mut self) {
        REHEARSING.set(false);
    }
}

#[derive(Hash, PartialEq, Eq, Clone)]
struct PipelineKey {
    file: &'static str,
    entry: &'static str,
    constants: Vec<(&'static str, u64)>,
}

#[derive(Hash, PartialEq, Eq)]
struct BindKey {
    layout: (u32, u32),
    arena: usize,
    buffers: Vec<(wgpu::Buffer, u64, Option<u64>)>,
}

/// Where a tensor lives on the GPU: a buffer and the bytes of it that it occupies.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Span<'a> {
    /// The buffer.
    pub(crate) buf: &'a wgpu::Buffer,
    /// The first byte.
    pub(crate) offset: u64,
    /// The bytes bound; `None`: the rest of the buffer (a tensor that owns its buffer).
    pub(crate) size: Option<u64>,
}

impl<'a> Span<'a> {
    /// All of `buf`.
    pub(crate) fn whole(buf: &'a wgpu::Buffer) -> Span<'a> {
        Span {
            buf,
            offset: 0,
            size: None,
        }
    }
}

/// A readback whose copies are submitted and whose mapping is pending: see
/// [`GpuContext::start_read_parts`].
pub(crate) struct PendingRead {
    staging: wgpu::Buffer,
    /// The submission that holds the copies.
    index: Option<wgpu::SubmissionIndex>,
    rx: futures::channel::oneshot::Receiver<std::result::Result<(), wgpu::BufferAsyncError>>,
    /// (bytes wanted, bytes in the staging buffer) of each part.
    sizes: Vec<(u64, u64)>,
}

/// Counters that show what a step costs.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Stats {
    /// Command submissions to the queue.
    pub submissions: u64,
    /// Compute dispatches recorded.
    pub dispatches: u64,
    /// Bytes copied back to the host.
    pub bytes_read: u64,
    /// Bytes in buffers kiln holds now (live tensors and the pool).
    pub bytes_allocated: u64,
    /// Most bytes kiln held at once.
    pub peak_bytes: u64,
    /// Buffers created (pool misses).
    pub buffers_created: u64,
    /// Kernels that helper processes compiled for this device (CPU adapters; see
    /// `KILN_PRECOMPILE`).
    pub precompiled: u64,
    /// Compute pipelines built (one per kernel and set of pipeline constants; each is
    /// compiled once, at its first use).
    pub pipelines: u64,
}

pub(super) struct Layout {
    pub(super) bind: wgpu::BindGroupLayout,
    pub(super) pipeline: wgpu::PipelineLayout,
}

struct Pending {
    encoder: Option<wgpu::CommandEncoder>,
    pass: Option<wgpu::ComputePass<'static>>,
    params: Vec<u8>,
    arena: usize,
    /// While set, a new compute pass writes timestamps 0 and 1 of this set at its ends.
    timing: Option<wgpu::QuerySet>,
    /// The helpers' jobs for the kernels new in this submission (see `precompile`).
    fresh: Vec<u64>,
}

/// Errors wgpu reported outside any error scope, shared with its callback.
type Errors = Arc<Mutex<Vec<Error>>>;
/// Why the device was lost, shared with its callback.
type Lost = Arc<Mutex<Option<String>>>;

/// Everything kiln keeps per wgpu device.
pub struct GpuContext {
    pub(crate) device: wgpu::Device,
    pub(crate) queue: wgpu::Queue,
    pub(crate) info: wgpu::AdapterInfo,
    pub(crate) limits: wgpu::Limits,
    /// Whether the device was opened with timestamp queries (the adapter offers them).
    timestamps: bool,
    /// Whether the device was opened with subgroup operations (the adapter offers them).
    subgroups: bool,
    param_stride: u64,
    arenas: [wgpu::Buffer; 2],
    layouts: Mutex<HashMap<(u32, u32), Arc<Layout>>>,
    pipelines: Mutex<HashMap<PipelineKey, wgpu::ComputePipeline>>,
    bind_groups: Mutex<HashMap<BindKey, wgpu::BindGroup>>,
    pending: Mutex<Pending>,
    pool: Mutex<HashMap<u64, Vec<wgpu::Buffer>>>,
    /// Errors wgpu reported outside any error scope, oldest first.
    errors: Errors,
    /// Why the device was lost, once it has been: every later call fails with it.
    lost: Lost,
    submissions: AtomicU64,
    dispatches: AtomicU64,
    bytes_read: AtomicU64,
    bytes_allocated: AtomicU64,
    peak_bytes: AtomicU64,
    buffers_created: AtomicU64,
    /// With `KILN_PROFILE=1` (and timestamps): GPU time and count per kernel and grid.
    profile: Option<Mutex<HashMap<String, (u64, std::time::Duration)>>>,
    /// On CPU adapters: helper processes that compile new kernels on the other cores.
    precompile: Option<Precompiler>,
    /// Helper jobs of pipelines built in a rehearsal, for their first real dispatch to
    /// wait for.
    rehearsed: Mutex<HashMap<PipelineKey, u64>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding a lock leaves plain data behind; keep going with it.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Bytes a tensor of `len` f32 occupies on the GPU: at least 16, a multiple of 16
/// (saturating, so an absurd length compares as over every limit instead of wrapping).
fn buffer_bytes(len: usize) -> u64 {
    (len.max(1) as u64)
        .saturating_mul(4)
        .div_ceil(16)
        .saturating_mul(16)
}

/// Maps an error wgpu reported while `what` (of `size` bytes, 0 if unknown) was being
/// created or run to kiln's variant for it.
pub(crate) fn from_wgpu(e: wgpu::Error, what: &str, size: u64) -> Error {
    match e {
        wgpu::Error::OutOfMemory { source } => Error::OutOfMemory {
            what: what.to_string(),
            size,
            detail: format!("the GPU driver refused it ({source})"),
        },
        wgpu::Error::Validation { description, .. } => {
            Error::Gpu(format!("{what}: {}", description.trim_end()))
        }
        wgpu::Error::Internal { description, .. } => Error::Gpu(format!(
            "{what}: internal error: {}",
            description.trim_end()
        )),
    }
}

/// The message of a panic payload, for the rare wgpu call that panics on a device error.
fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        s.to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "wgpu panicked".to_string()
    }
}

/// `bytes` (at most `PARAM_BYTES`) zero-padded to a whole uniform block.
pub(super) fn param_block(bytes: &[u8]) -> [u8; PARAM_BYTES as usize] {
    let mut block = [0u8; PARAM_BYTES as usize];
    let n = bytes.len().min(block.len());
    block[..n].copy_from_slice(&bytes[..n]);
    block
}

/// The bind-group and pipeline layouts of kernels with `inputs` read-only and `outputs`
/// read-write storage buffers after the uniform parameters.
pub(super) fn new_layout(device: &wgpu::Device, inputs: u32, outputs: u32) -> Layout {
    let storage = |binding, read_only| wgpu::BindGroupLayoutEntry {
        binding,
        visibility: wgpu::ShaderStages::COMPUTE,
        ty: wgpu::BindingType::Buffer {
            ty: wgpu::BufferBindingType::Storage { read_only },
            has_dynamic_offset: false,
            min_binding_size: None,
        },
        count: None,
    };
    let mut entries = vec![wgpu::BindGroupLayoutEntry {
        binding: 0,
        visibility: wgpu::ShaderStages::COMPUTE,
        ty: wgpu::BindingType::Buffer {
            ty: wgpu::BufferBindingType::Uniform,
            has_dynamic_offset: true,
            min_binding_size: wgpu::BufferSize::new(PARAM_BYTES),
        },
        count: None,
    }];
    entries.extend((0..inputs).map(|i| storage(1 + i, true)));
    entries.extend((0..outputs).map(|i| storage(1 + inputs + i, false)));
    let bind = device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
        label: Some("kiln layout"),
        entries: &entries,
    });
    let pipeline = device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
        label: Some("kiln pipeline layout"),
        bind_group_layouts: &[Some(&bind)],
        immediate_size: 0,
    });
    Layout { bind, pipeline }
}

/// The code of a pipeline: its WGSL, entry point and whether naga guards every access.
pub(super) struct Code<'a> {
    pub(super) source: &'a str,
    pub(super) entry: &'a str,
    pub(super) bounds_checks: bool,
}

impl Kernel {
    pub(super) fn code(&self) -> Code<'static> {
        Code {
            source: self.source,
            entry: self.entry,
            bounds_checks: self.bounds_checks,
        }
    }
}

/// The optional features kiln asks of `adapter` where offered: timestamps let the matmul
/// autotuner time kernels on the GPU itself, subgroups let the lavapipe matmuls share
/// loads across SIMD lanes. (Asking for a missing feature fails device creation.)
pub(super) fn wanted_features(adapter: &wgpu::Adapter) -> wgpu::Features {
    adapter.features() & (wgpu::Features::TIMESTAMP_QUERY | wgpu::Features::SUBGROUP)
}

/// Compiles `code` with `constants` on `device` (nothing cached; errors go to the
/// caller's error scope).
pub(super) fn new_pipeline(
    device: &wgpu::Device,
    layout: &Layout,
    code: &Code<'_>,
    constants: &[(&str, f64)],
) -> wgpu::ComputePipeline {
    let desc = wgpu::ShaderModuleDescriptor {
        label: Some(code.entry),
        source: wgpu::ShaderSource::Wgsl(code.source.into()),
    };
    // Keep bounds checks (a bad index must not read outside a buffer) but drop the
    // loop-bounding counters naga adds to every loop: they cost about half the
    // throughput of the matmul inner loops on lavapipe.
    let checks = wgpu::ShaderRuntimeChecks {
        bounds_checks: code.bounds_checks,
        force_loop_bounding: false,
        ..wgpu::ShaderRuntimeChecks::checked()
    };
    // SAFETY: every loop in kiln's kernels runs to a bound taken from its uniform
    // parameters, so none can hang the device without loop bounding; kernels that
    // skip bounds checks clamp every index they load and guard every store.
    let module = unsafe { device.create_shader_module_trusted(desc, checks) };
    device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
        label: Some(code.entry),
        layout: Some(&layout.pipeline),
        module: &module,
        entry_point: Some(code.entry),
        compilation_options: wgpu::PipelineCompilationOptions {
            constants,
            zero_initialize_workgroup_memory: false,
        },
        cache: None,
    })
}

/// The errors and the loss `device` reports outside any error scope, as they come: every
/// later call on the context fails with them.
fn watch(device: &wgpu::Device) -> (Errors, Lost) {
    let errors = Arc::new(Mutex::new(Vec::new()));
    let sink = errors.clone();
    device.on_uncaptured_error(Arc::new(move |e: wgpu::Error| {
        lock(&sink).push(from_wgpu(e, "GPU work", 0));
    }));
    let lost = Arc::new(Mutex::new(None));
    let flag = lost.clone();
    device.set_device_lost_callback(move |reason, message| {
        let why = match reason {
            wgpu::DeviceLostReason::Destroyed => "destroyed".to_string(),
            wgpu::DeviceLostReason::Unknown => "driver error".to_string(),
        };
        let message = message.trim();
        *lock(&flag) = Some(if message.is_empty() {
            why
        } else {
            format!("{why}: {message}")
        });
    });
    (errors, lost)
}

/// The two uniform arenas that submissions take turns with, `ARENA_SLOTS` parameter
/// blocks of `stride` bytes each.
fn param_arenas(device: &wgpu::Device, stride: u64) -> [wgpu::Buffer; 2] {
    [0, 1].map(|i| {
        device.create_buffer(&wgpu::BufferDescriptor {
            label: Some(["kiln params 0", "kiln params 1"][i]),
            size: stride * ARENA_SLOTS,
            usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        })
    })
}

impl GpuContext {
    /// Opens the adapter `pick` names (see `adapter::choose`) with its own limits.
    pub(crate) fn new(pick: super::adapter::Pick<'_>) -> Result<Self> {
        let instance = super::adapter::instance()?;
        let adapter = super::adapter::choose(&instance, pick)?;
        let info = adapter.get_info();
        let limits = adapter.limits();
        let features = wanted_features(&adapter);
        // Started first, so that the helpers open their devices while this one does. Not
        // for the ranks of a data-parallel job, which keep the other cores busy already.
        let precompile = matches!(pick, super::adapter::Pick::Best(_))
            .then(|| Precompiler::start(&info))
            .flatten();
        let desc = wgpu::DeviceDescriptor {
            label: Some("kiln"),
            required_features: features,
            required_limits: limits.clone(),
            ..Default::default()
        };
        let (device, queue) = pollster::block_on(adapter.request_device(&desc)).map_err(|e| {
            Error::DeviceRequest {
                adapter: info.name.clone(),
                reason: e.to_string(),
            }
        })?;
        let (errors, lost) = watch(&device);
        let param_stride = (limits.min_uniform_buffer_offset_alignment as u64).max(PARAM_BYTES);
        let arenas = param_arenas(&device, param_stride);
        Ok(GpuContext {
            device,
            queue,
            info,
            limits,
            timestamps: features.contains(wgpu::Features::TIMESTAMP_QUERY),
            subgroups: features.contains(wgpu::Features::SUBGROUP),
            param_stride,
            arenas,
            layouts: Mutex::default(),
            pipelines: Mutex::default(),
            bind_groups: Mutex::default(),
            pending: Mutex::new(Pending {
                encoder: None,
                pass: None,
                params: Vec::new(),
                arena: 0,
                timing: None,
                fresh: Vec::new(),
            }),
            pool: Mutex::default(),
            errors,
            lost,
            submissions: AtomicU64::new(0),
            dispatches: AtomicU64::new(0),
            bytes_read: AtomicU64::new(0),
            bytes_allocated: AtomicU64::new(0),
            peak_bytes: AtomicU64::new(0),
            buffers_created: AtomicU64::new(0),
            profile: (crate::config::profile()
                && features.contains(wgpu::Features::TIMESTAMP_QUERY))
            .then(Mutex::default),
            precompile,
            rehearsed: Mutex::default(),
        })
    }

    /// The limits the device was opened with (the adapter's own).
    pub fn limits(&self) -> &wgpu::Limits {
        &self.limits
    }

    /// Whether GPU timestamps are available (`Features::TIMESTAMP_QUERY`).
    pub fn has_timestamps(&self) -> bool {
        self.timestamps
    }

    /// The fixed subgroup size when the device has subgroup operations and every subgroup
    /// has the same size (8 on lavapipe with 256-bit vectors), else None.
    pub fn subgroup_size(&self) -> Option<u32> {
        let (lo, hi) = (self.info.subgroup_min_size, self.info.subgroup_max_size);
        (self.subgroups && lo == hi).then_some(lo)
    }

    /// True when the adapter is a CPU (software) implementation such as lavapipe.
    pub fn is_software(&self) -> bool {
        self.info.device_type == wgpu::DeviceType::Cpu
    }

    /// Whether helper processes compile this device's new kernels (CPU adapters on Vulkan
    /// with more than one core, in programs that allow it; `KILN_PRECOMPILE=0` turns it
    /// off).
    pub fn precompiles(&self) -> bool {
        self.precompile.is_some()
    }

    /// The counters since the device was opened.
    pub fn stats(&self) -> Stats {
        Stats {
            submissions: self.submissions.load(Ordering::Relaxed),
            dispatches: self.dispatches.load(Ordering::Relaxed),
            bytes_read: self.bytes_read.load(Ordering::Relaxed),
            bytes_allocated: self.bytes_allocated.load(Ordering::Relaxed),
            peak_bytes: self.peak_bytes.load(Ordering::Relaxed),
            buffers_created: self.buffers_created.load(Ordering::Relaxed),
            precompiled: self.precompile.as_ref().map_or(0, Precompiler::compiled),
            pipelines: lock(&self.pipelines).len() as u64,
        }
    }

    /// A `DeviceLost` error once the device has been lost.
    pub(crate) fn check_lost(&self) -> Result<()> {
        match lock(&self.lost).as_ref() {
            Some(reason) => Err(Error::DeviceLost {
                reason: reason.clone(),
            }),
            None => Ok(()),
        }
    }

    /// Reports a lost device, else the GPU errors reported since the last check:
    /// the first out-of-memory one if any (it says what to do), else all of them.
    pub(crate) fn take_error(&self) -> Result<()> {
        self.check_lost()?;
        let mut errors = lock(&self.errors);
        if errors.is_empty() {
            return Ok(());
        }
        let (oom, rest): (Vec<Error>, Vec<Error>) = errors
            .drain(..)
            .partition(|e| matches!(e, Error::OutOfMemory { .. }));
        drop(errors);
        if let Some(e) = oom.into_iter().next() {
            return Err(e);
        }
        let text: Vec<String> = rest
            .iter()
            .map(|e| match e {
                Error::Gpu(m) => m.clone(),
                other => other.to_string(),
            })
            .collect();
        Err(Error::Gpu(text.join("; ")))
    }

    /// Creates a buffer, turning the driver's refusal into an `OutOfMemory` error
    /// (outside a scope, wgpu would only report it later, to the uncaptured handler).
    fn create_buffer(&self, desc: &wgpu::BufferDescriptor<'_>, what: &str) -> Result<wgpu::Buffer> {
        self.check_lost()?;
        let scope = self.device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
        let buf = self.device.create_buffer(desc);
        match pollster::block_on(scope.pop()) {
            Some(e) => Err(from_wgpu(e, what, desc.size)),
            None => Ok(buf),
        }
    }

    /// Waits for the submitted work. wgpu panics on a device error here (a lost device)
    /// instead of returning it, so the panic is caught and reported as an error.
    fn poll_wait(&self) -> Result<()> {
        self.poll_wait_for(None)
    }

    /// [`poll_wait`](Self::poll_wait) until submission `index` has run (`None`: the latest).
    fn poll_wait_for(&self, index: Option<wgpu::SubmissionIndex>) -> Result<()> {
        self.check_lost()?;
        let waits_for_index = index.is_some();
        let polled = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            self.device.poll(wgpu::PollType::Wait {
                submission_index: index,
                timeout: None,
            })
        }));
        match polled {
            Ok(Ok(_)) => Ok(()),
            // A destroyed device refuses submissions, so it knows no index for them: the
            // plain wait then reports the loss.
            Ok(Err(_)) if waits_for_index => self.poll_wait_for(None),
            Ok(Err(e)) => Err(Error::Gpu(format!("waiting for the GPU: {e}"))),
            Err(payload) => {
                self.check_lost()?;
                Err(Error::DeviceLost {
                    reason: panic_message(payload.as_ref()),
                })
            }
        }
    }

    /// Checks a tensor's size against the adapter's limits.
    pub(crate) fn check_size(&self, what: &str, len: usize) -> Result<u64> {
        let size = buffer_bytes(len);
        let binding = self.limits.max_storage_buffer_binding_size;
        if size > self.limits.max_buffer_size {
            return Err(Error::OverLimit {
                what: what.to_string(),
                size,
                limit_name: "max_buffer_size",
                limit: self.limits.max_buffer_size,
            });
        }
        if size > binding {
            return Err(Error::OverLimit {
                what: what.to_string(),
                size,
                limit_name: "max_storage_buffer_binding_size",
                limit: binding,
            });
        }
        Ok(size)
    }

    /// A storage buffer for `len` f32, from the pool when one of that size is free.
    pub(crate) fn alloc(&self, len: usize) -> Result<wgpu::Buffer> {
        let size = self.check_size("tensor", len)?;
        self.check_lost()?;
        if let Some(buf) = lock(&self.pool).get_mut(&size).and_then(Vec::pop) {
            return Ok(buf);
        }
        let desc = wgpu::BufferDescriptor {
            label: Some("kiln tensor"),
            size,
            usage: wgpu::BufferUsages::STORAGE
                | wgpu::BufferUsages::COPY_SRC
                | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        };
        let buf = match self.create_buffer(&desc, "tensor") {
            Ok(buf) => buf,
            Err(Error::OutOfMemory { .. }) if !lock(&self.pool).is_empty() => {
                // Pooled buffers of other sizes may be what fills the device: free them, retry.
                self.trim_pool();
                self.create_buffer(&desc, "tensor")?
            }
            Err(e) => return Err(e),
        };
        self.buffers_created.fetch_add(1, Ordering::Relaxed);
        let now = self.bytes_allocated.fetch_add(size, Ordering::Relaxed) + size;
        self.peak_bytes.fetch_max(now, Ordering::Relaxed);
        Ok(buf)
    }

    /// Takes a buffer back into the pool for reuse by the next tensor of its size.
    pub(crate) fn release(&self, buf: wgpu::Buffer) {
        lock(&self.pool).entry(buf.size()).or_default().push(buf);
    }

    /// Drops every pooled buffer (memory goes back to the driver).
    pub fn trim_pool(&self) {
        let mut pool = lock(&self.pool);
        let freed: u64 = pool.values().flatten().map(|b| b.size()).sum();
        pool.clear();
        lock(&self.bind_groups).clear();
        self.bytes_allocated.fetch_sub(freed, Ordering::Relaxed);
    }

    fn layout(&self, inputs: u32, outputs: u32) -> Arc<Layout> {
        let mut layouts = lock(&self.layouts);
        layouts
            .entry((inputs, outputs))
            .or_insert_with(|| Arc::new(new_layout(&self.device, inputs, outputs)))
            .clone()
    }

    /// The pipeline of `k` with `constants`, built on its first use (after `new_job`
    /// hands it to a compile helper), and the helper job the submission that first uses
    /// it must wait for: the new one, or the one a rehearsal started.
    fn pipeline(
        &self,
        k: &Kernel,
        constants: &[(&'static str, f64)],
        new_job: impl FnOnce() -> Option<u64>,
    ) -> Result<(wgpu::ComputePipeline, Option<u64>)> {
        let key = PipelineKey {
            file: k.file,
            entry: k.entry,
            constants: constants.iter().map(|(n, v)| (*n, v.to_bits())).collect(),
        };
        let rehearsing = REHEARSING.get();
        if let Some(p) = lock(&self.pipelines).get(&key) {
            let job = match lock(&self.rehearsed) {
                r if rehearsing || r.is_empty() => None,
                mut r => r.remove(&key),
            };
            return Ok((p.clone(), job));
        }
        let job = new_job();
        let layout = self.layout(k.inputs, k.outputs);
        let scope = self.device.push_error_scope(wgpu::ErrorFilter::Validation);
        let pipeline = new_pipeline(&self.device, &layout, &k.code(), constants);
        if let Some(e) = pollster::block_on(scope.pop()) {
            return Err(Error::Gpu(format!("kernel {}::{}: {e}", k.file, k.entry)));
        }
        lock(&self.pipelines).insert(key.clone(), pipeline.clone());
        match (rehearsing, job) {
            (true, Some(id)) => {
                lock(&self.rehearsed).insert(key, id);
                Ok((pipeline, None))
            }
            _ => Ok((pipeline, job)),
        }
    }

    /// Runs `f` as a rehearsal on this thread: each compute dispatch it makes builds its
    /// pipeline and hands it to a compile helper, as a first dispatch does, but records
    /// nothing. So a CPU adapter's helpers can compile the kernels of work to come while
    /// this thread does something else (a fit rehearses its first step's forward pass
    /// while the data is uploaded); the first real dispatch of each such pipeline then
    /// waits for its helper, as usual. Copies, clears and uploads are not affected.
    pub(crate) fn rehearse<T>(&self, f: impl FnOnce() -> Result<T>) -> Result<T> {
        REHEARSING.set(true);
        let _end = Rehearsal;
        f()
    }

    /// Records one dispatch into the pending encoder; nothing runs until a flush.
    /// `params` is the kernel's uniform block: a `#[repr(C)]` struct that mirrors its
    /// WGSL `Params` field for field (the layout test in src/ops/mod.rs checks each).
    /// It goes into a zero-filled slot of `PARAM_BYTES`, so its size need not be a
    /// multiple of 16; a struct larger than the slot does not build.
    pub(crate) fn dispatch<P: bytemuck::Pod>(
        &self,
        k: &Kernel,
        constants: &[(&'static str, f64)],
        params: &P,
        buffers: &[Span<'_>],
        groups: [u32; 3],
    ) -> Result<()> {
        const { assert!(std::mem::size_of::<P>() <= PARAM_BYTES as usize) };
        let params = bytemuck::bytes_of(params);
        let Some(profile) = self.profile.as_ref().filter(|_| !REHEARSING.get()) else {
            return self.record(k, constants, params, buffers, groups);
        };
        if lock(&self.pending).timing.is_some() {
            // Already inside a timed pass (the autotuner's): time nothing twice.
            return self.record(k, constants, params, buffers, groups);
        }
        // Profiling: every dispatch in a timed pass of its own, submitted and read back
        // at once. Slow, but each kernel's GPU time comes out exact.
        let took = self.time_pass(|| self.record(k, constants, params, buffers, groups))?;
        let key = format!("{}::{} {groups:?}", k.file, k.entry);
        let mut table = lock(profile);
        let entry = table.entry(key).or_default();
        entry.0 += 1;
        entry.1 += took.unwrap_or_default();
        Ok(())
    }

    /// The profile so far (kernel and grid, dispatches, GPU time), most time first; empty
    /// unless `KILN_PROFILE=1` and the adapter has timestamps. Reading it clears it.
    pub fn take_profile(&self) -> Vec<(String, u64, std::time::Duration)> {
        let Some(profile) = &self.profile else {
            return Vec::new();
        };
        let mut rows: Vec<_> = lock(profile)
            .drain()
            .map(|(key, (n, t))| (key, n, t))
            .collect();
        rows.sort_by_key(|r| std::cmp::Reverse(r.2));
        rows
    }

    /// Records one dispatch into the pending pass; `bytes` are its uniform block.
    fn record(
        &self,
        k: &Kernel,
        constants: &[(&'static str, f64)],
        bytes: &[u8],
        buffers: &[Span<'_>],
        groups: [u32; 3],
    ) -> Result<()> {
        debug_assert_eq!(buffers.len() as u32, k.inputs + k.outputs);
        if groups.contains(&0) {
            return Ok(());
        }
        let max = self.limits.max_compute_workgroups_per_dimension;
        if groups.iter().any(|&g| g > max) {
            return Err(Error::OverLimit {
                what: format!(
                    "dispatch of {}::{} ({groups:?} workgroups)",
                    k.file, k.entry
                ),
                size: groups.iter().copied().max().unwrap_or(0) as u64,
                limit_name: "max_compute_workgroups_per_dimension",
                limit: max as u64,
            });
        }
        self.check_lost()?;
        if bytes.len() > PARAM_BYTES as usize {
            return Err(Error::Gpu(format!(
                "kernel {}::{} takes {} parameter bytes, more than the {PARAM_BYTES} reserved",
                k.file,
                k.entry,
                bytes.len()
            )));
        }
        // A helper starts on a new kernel before this process builds it too (it needs a
        // pipeline of its own), so the two builds overlap.
        let (pipeline, job) = self.pipeline(k, constants, || {
            let sizes = buffers
                .iter()
                .map(|b| b.size.unwrap_or(b.buf.size() - b.offset));
            self.precompile
                .as_ref()
                .and_then(|p| p.job(k, constants, bytes, sizes.collect()))
        })?;
        if REHEARSING.get() {
            return Ok(());
        }
        let mut pending = lock(&self.pending);
        pending.fresh.extend(job);
        if pending.params.len() as u64 >= self.param_stride * ARENA_SLOTS {
            self.submit(&mut pending);
        }
        let offset = pending.params.len();
        pending.params.extend_from_slice(&param_block(bytes));
        pending
            .params
            .resize(offset + self.param_stride as usize, 0);
        let arena = pending.arena;
        let bind_group = self.bind_group(k, arena, buffers);
        let pass = self.pass(&mut pending);
        pass.set_pipeline(&pipeline);
        pass.set_bind_group(0, &bind_group, &[offset as u32]);
        pass.dispatch_workgroups(groups[0], groups[1], groups[2]);
        self.dispatches.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    fn bind_group(&self, k: &Kernel, arena: usize, buffers: &[Span<'_>]) -> wgpu::BindGroup {
        let key = BindKey {
            layout: (k.inputs, k.outputs),
            arena,
            buffers: buffers
                .iter()
                .map(|b| (b.buf.clone(), b.offset, b.size))
                .collect(),
        };
        let mut cache = lock(&self.bind_groups);
        if let Some(bg) = cache.get(&key) {
            return bg.clone();
        }
        if cache.len() > 4096 {
            cache.clear();
        }
        let layout = self.layout(k.inputs, k.outputs);
        let mut entries = vec![wgpu::BindGroupEntry {
            binding: 0,
            resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                buffer: &self.arenas[arena],
                offset: 0,
                size: wgpu::BufferSize::new(PARAM_BYTES),
            }),
        }];
        entries.extend(
            buffers
                .iter()
                .enumerate()
                .map(|(i, b)| wgpu::BindGroupEntry {
                    binding: 1 + i as u32,
                    resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                        buffer: b.buf,
                        offset: b.offset,
                        size: b.size.and_then(wgpu::BufferSize::new),
                    }),
                }),
        );
        let bg = self.device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: None,
            layout: &layout.bind,
            entries: &entries,
        });
        cache.insert(key, bg.clone());
        bg
    }

    fn new_encoder(&self) -> wgpu::CommandEncoder {
        self.device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                label: Some("kiln"),
            })
    }

    fn encoder<'a>(&self, pending: &'a mut Pending) -> &'a mut wgpu::CommandEncoder {
        pending.pass = None;
        pending.encoder.get_or_insert_with(|| self.new_encoder())
    }

    fn pass<'a>(&self, pending: &'a mut Pending) -> &'a mut wgpu::ComputePass<'static> {
        let Pending {
            encoder,
            pass,
            timing,
            ..
        } = pending;
        pass.get_or_insert_with(|| {
            let timestamp_writes =
                timing
                    .as_ref()
                    .map(|query_set| wgpu::ComputePassTimestampWrites {
                        query_set,
                        beginning_of_pass_write_index: Some(0),
                        end_of_pass_write_index: Some(1),
                    });
            encoder
                .get_or_insert_with(|| self.new_encoder())
                .begin_compute_pass(&wgpu::ComputePassDescriptor {
                    label: None,
                    timestamp_writes,
                })
                .forget_lifetime()
        })
    }

    /// Runs `record` (one dispatch) in a compute pass of its own and, where the device has
    /// timestamps, returns the GPU time between the pass's ends once it has run; None
    /// without timestamps or when nothing was recorded (the caller then uses a wall clock).
    pub(crate) fn time_pass(
        &self,
        record: impl FnOnce() -> Result<()>,
    ) -> Result<Option<std::time::Duration>> {
        if !self.timestamps {
            record()?;
            return Ok(None);
        }
        let set = self.device.create_query_set(&wgpu::QuerySetDescriptor {
            label: Some("kiln timing"),
            ty: wgpu::QueryType::Timestamp,
            count: 2,
        });
        let desc = wgpu::BufferDescriptor {
            label: Some("kiln timestamps"),
            size: 16,
            usage: wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC,
            mapped_at_creation: false,
        };
        let resolve = self.create_buffer(&desc, "timestamp buffer")?;
        {
            let mut pending = lock(&self.pending);
            // Earlier work goes first, so the timed dispatch opens a pass of its own.
            self.submit(&mut pending);
            pending.timing = Some(set.clone());
        }
        let recorded = record();
        {
            let mut pending = lock(&self.pending);
            pending.timing = None;
            // encoder() ends the timed pass first.
            self.encoder(&mut pending)
                .resolve_query_set(&set, 0..2, &resolve, 0);
        }
        recorded?;
        let bytes = pollster::block_on(self.read(Span::whole(&resolve), 16))?;
        let ticks: Vec<u64> = bytes
            .chunks_exact(8)
            .map(|c| u64::from_le_bytes(c.try_into().unwrap_or([0; 8])))
            .collect();
        let (start, end) = (ticks.first().copied(), ticks.get(1).copied());
        Ok(match (start, end) {
            (Some(s), Some(e)) if e > s => {
                let ns = (e - s) as f64 * f64::from(self.queue.get_timestamp_period());
                Some(std::time::Duration::from_nanos(ns as u64))
            }
            _ => None,
        })
    }

    /// Records a buffer-to-buffer copy after the dispatches recorded so far.
    pub(crate) fn copy(&self, src: Span<'_>, dst: Span<'_>, bytes: u64) {
        let mut pending = lock(&self.pending);
        self.encoder(&mut pending)
            .copy_buffer_to_buffer(src.buf, src.offset, dst.buf, dst.offset, bytes);
    }

    /// Records a zero fill of `dst`.
    pub(crate) fn clear(&self, dst: Span<'_>) {
        let mut pending = lock(&self.pending);
        self.encoder(&mut pending)
            .clear_buffer(dst.buf, dst.offset, dst.size);
    }

    /// Uploads `data` into `dst`, ordered after the work recorded so far.
    pub(crate) fn upload(&self, dst: Span<'_>, data: &[u8]) -> Result<()> {
        self.check_lost()?;
        let mut pending = lock(&self.pending);
        if pending.encoder.is_none() {
            // Nothing recorded can still read the old contents: write directly.
            self.queue.write_buffer(dst.buf, dst.offset, data);
            return Ok(());
        }
        // Not DeviceExt::create_buffer_init: it panics when the mapping fails (out of memory).
        let n = data.len() as u64;
        let desc = wgpu::BufferDescriptor {
            label: Some("kiln upload"),
            size: n.div_ceil(wgpu::COPY_BUFFER_ALIGNMENT).max(1) * wgpu::COPY_BUFFER_ALIGNMENT,
            usage: wgpu::BufferUsages::COPY_SRC,
            mapped_at_creation: true,
        };
        let staging = self.create_buffer(&desc, "upload staging buffer")?;
        {
            let mut view = staging
                .get_mapped_range_mut(..)
                .map_err(|e| Error::Gpu(format!("upload staging buffer: {e}")))?;
            if view.len() < data.len() {
                return Err(Error::Gpu(
                    "upload staging buffer is smaller than its data".into(),
                ));
            }
            view.slice(..data.len()).copy_from_slice(data);
        }
        staging.unmap();
        self.encoder(&mut pending)
            .copy_buffer_to_buffer(&staging, 0, dst.buf, dst.offset, n);
        Ok(())
    }

    /// Submits the recorded work; its index, or `None` where nothing was recorded.
    fn submit(&self, pending: &mut Pending) -> Option<wgpu::SubmissionIndex> {
        pending.pass = None;
        let encoder = pending.encoder.take()?;
        if !pending.params.is_empty() {
            self.queue
                .write_buffer(&self.arenas[pending.arena], 0, &pending.params);
        }
        // llvmpipe compiles a kernel at its first dispatch: wait for the helpers that
        // are compiling this submission's new ones, then find them in Mesa's cache.
        if let Some(p) = self
            .precompile
            .as_ref()
            .filter(|_| !pending.fresh.is_empty())
        {
            p.wait(&std::mem::take(&mut pending.fresh));
        }
        let index = self.queue.submit([encoder.finish()]);
        self.submissions.fetch_add(1, Ordering::Relaxed);
        pending.params.clear();
        // Bind groups refer to one arena; the next submission's parameters are written
        // while this one may still read its own, so alternate between two arenas.
        pending.arena ^= 1;
        Some(index)
    }

    /// Submits everything recorded so far as one command buffer, then reports a lost
    /// device or any GPU error seen since the last check (without waiting for the GPU).
    pub fn flush(&self) -> Result<()> {
        self.check_lost()?;
        {
            let mut pending = lock(&self.pending);
            self.submit(&mut pending);
        }
        self.take_error()
    }

    /// Blocks until the GPU has finished all submitted work.
    pub fn synchronize(&self) -> Result<()> {
        self.flush()?;
        self.poll_wait()?;
        self.take_error()
    }

    /// Copies `bytes` of `src` back to the host once the recorded work has run.
    pub(crate) async fn read(&self, src: Span<'_>, bytes: u64) -> Result<Vec<u8>> {
        self.read_parts(&[(src, bytes)]).await
    }

    /// Copies the first `bytes` of each buffer back to the host, concatenated, with one
    /// staging buffer and one wait (a model's gradients for an all-reduce, say).
    pub(crate) async fn read_parts(&self, parts: &[(Span<'_>, u64)]) -> Result<Vec<u8>> {
        let read = self.start_read_parts(parts)?;
        self.finish_read(read).await
    }

    /// The first half of [`read_parts`](Self::read_parts): submits the work recorded so
    /// far and the copies into one staging buffer, and asks for its mapping without
    /// waiting, so the host can work while the GPU runs (and work submitted later).
    pub(crate) fn start_read_parts(&self, parts: &[(Span<'_>, u64)]) -> Result<PendingRead> {
        self.check_lost()?;
        let padded: Vec<u64> = parts.iter().map(|(_, b)| b.div_ceil(4) * 4).collect();
        let total: u64 = padded.iter().sum();
        let desc = wgpu::BufferDescriptor {
            label: Some("kiln readback"),
            size: total.max(4),
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        };
        let staging = self.create_buffer(&desc, "readback staging buffer")?;
        let index = {
            let mut pending = lock(&self.pending);
            let mut at = 0;
            for ((src, _), &n) in parts.iter().zip(&padded) {
                if n > 0 {
                    self.encoder(&mut pending)
                        .copy_buffer_to_buffer(src.buf, src.offset, &staging, at, n);
                }
                at += n;
            }
            self.submit(&mut pending)
        };
        let (tx, rx) = futures::channel::oneshot::channel();
        staging.map_async(wgpu::MapMode::Read, .., move |r| {
            let _ = tx.send(r);
        });
        Ok(PendingRead {
            staging,
            index,
            rx,
            sizes: parts.iter().map(|(_, b)| *b).zip(padded).collect(),
        })
    }

    /// The second half of [`read_parts`](Self::read_parts): waits for `read`'s copies
    /// only (not for work submitted after them) and returns the bytes.
    pub(crate) async fn finish_read(&self, read: PendingRead) -> Result<Vec<u8>> {
        let PendingRead {
            staging,
            index,
            rx,
            sizes,
        } = read;
        let mapped = self.poll_until(rx, index).await?;
        if let Err(e) = mapped {
            self.take_error()?;
            return Err(Error::Gpu(format!("readback failed: {e}")));
        }
        self.take_error()?;
        let view = staging
            .get_mapped_range(..)
            .map_err(|e| Error::Gpu(format!("readback failed: {e}")))?;
        let bytes: u64 = sizes.iter().map(|(b, _)| b).sum();
        let mut out = Vec::with_capacity(bytes as usize);
        let mut at = 0;
        for (n, padded) in sizes {
            let part = view
                .get(at..at + n as usize)
                .ok_or_else(|| Error::Gpu("readback buffer is smaller than requested".into()))?;
            out.extend_from_slice(part);
            at += padded as usize;
        }
        drop(view);
        staging.unmap();
        self.bytes_read.fetch_add(bytes, Ordering::Relaxed);
        Ok(out)
    }

    /// Drives the device until `rx` resolves; on native targets nothing else polls it.
    /// With `index`, each wait ends once that submission has run, not the latest one.
    async fn poll_until<T>(
        &self,
        mut rx: futures::channel::oneshot::Receiver<T>,
        index: Option<wgpu::SubmissionIndex>,
    ) -> Result<T> {
        let lost = || match self.check_lost() {
            Err(e) => e,
            Ok(()) => Error::DeviceLost {
                reason: "the readback was abandoned by the driver".into(),
            },
        };
        if cfg!(target_arch = "wasm32") {
            // The browser's event loop resolves the mapping.
            return rx.await.map_err(|_| lost());
        }
        loop {
            self.poll_wait_for(index.clone())?;
            match rx.try_recv() {
                Ok(Some(v)) => return Ok(v),
                Ok(None) => continue,
                Err(_) => return Err(lost()),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn oom() -> wgpu::Error {
        wgpu::Error::OutOfMemory {
            source: Box::new(std::io::Error::other("VK_ERROR_OUT_OF_DEVICE_MEMORY")),
        }
    }

    // lavapipe never refuses an allocation (it reserves address space only), so a real
    // out-of-memory cannot be provoked there: these check the mapping and the reporting.
    #[test]
    fn out_of_memory_maps_to_its_own_variant() {
        match from_wgpu(oom(), "tensor", 1 << 30) {
            Error::OutOfMemory { what, size, detail } => {
                assert_eq!((what.as_str(), size), ("tensor", 1 << 30));
                assert!(detail.contains("VK_ERROR_OUT_OF_DEVICE_MEMORY"), "{detail}");
            }
            other => panic!("expected OutOfMemory, got {other:?}"),
        }
        let msg = from_wgpu(oom(), "tensor", 1 << 30).to_string();
        assert!(
            msg.contains("out of memory") && msg.contains("1073741824 bytes"),
            "{msg}"
        );
        let late = from_wgpu(oom(), "GPU work", 0).to_string();
        assert!(
            !late.contains("0 bytes"),
            "an unknown size is not shown: {late}"
        );
        let v = wgpu::Error::Validation {
            source: Box::new(std::io::Error::other("x")),
            description: "Buffer is invalid\n".into(),
        };
        assert!(matches!(from_wgpu(v, "copy", 4), Error::Gpu(m) if m == "copy: Buffer is invalid"));
    }

    #[test]
    fn reported_out_of_memory_wins_over_other_errors() {
        let ctx = GpuContext::new(crate::device::Pick::Best(None)).unwrap();
        lock(&ctx.errors).push(Error::Gpu("first".into()));
        lock(&ctx.errors).push(from_wgpu(oom(), "GPU work", 0));
        assert!(matches!(ctx.flush(), Err(Error::OutOfMemory { .. })));
        assert!(ctx.flush().is_ok(), "errors are reported once");
        lock(&ctx.errors).push(Error::Gpu("a".into()));
        lock(&ctx.errors).push(Error::Gpu("b".into()));
        assert!(matches!(ctx.synchronize(), Err(Error::Gpu(m)) if m == "a; b"));
    }

    #[test]
    fn a_lost_device_is_an_error_everywhere() {
        let ctx = Arc::new(GpuContext::new(crate::device::Pick::Best(None)).unwrap());
        let buf = ctx.alloc(16).unwrap();
        ctx.upload(Span::whole(&buf), &[0u8; 64]).unwrap();
        ctx.synchronize().unwrap();
        // wgpu marks the device lost at once but calls the lost callback at the next poll,
        // so the first call to notice is one that waits for the GPU; every one after it fails.
        ctx.device.destroy();
        let lost = |r: Result<()>, what: &str| match r {
            Err(Error::DeviceLost { reason }) => {
                assert!(reason.contains("destroyed"), "{what}: {reason}")
            }
            other => panic!("{what}: expected DeviceLost, got {other:?}"),
        };
        lost(ctx.synchronize(), "synchronize");
        lost(ctx.flush(), "flush");
        lost(ctx.alloc(1 << 20).map(drop), "alloc");
        lost(ctx.upload(Span::whole(&buf), &[0u8; 64]), "upload");
        lost(
            pollster::block_on(ctx.read(Span::whole(&buf), 64)).map(drop),
            "readback",
        );

        // A readback is the other place a training loop waits: it notices too.
        let ctx = GpuContext::new(crate::device::Pick::Best(None)).unwrap();
        let buf = ctx.alloc(16).unwrap();
        ctx.device.destroy();
        lost(
            pollster::block_on(ctx.read(Span::whole(&buf), 64)).map(drop),
            "first readback",
        );
        let msg = Error::DeviceLost {
            reason: "destroyed".into(),
        }
        .to_string();
        assert!(msg.contains("lost") && msg.contains("new Device"), "{msg}");
    }
}
