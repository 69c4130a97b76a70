//! Compiling pipelines on a spare core, for CPU adapters on Vulkan. llvmpipe turns a
//! pipeline into machine code at its first dispatch, on the queue's one thread, so the
//! first training steps on a fresh machine wait for each new kernel in turn while the
//! other cores idle. A helper device on the same adapter dispatches the new kernels of
//! each submission in reverse order, with empty grids (compiled, nothing run), while the
//! queue compiles them in order: the two meet in the middle, the queue finding the
//! helper's machine code in Mesa's shader cache.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex};

use super::gpu::{new_layout, new_pipeline, Kernel, PARAM_BYTES};

/// The most buffer bytes a compilation may allocate on the helper device.
const MAX_BYTES: u64 = 64 << 20;

/// One pipeline to compile: a kernel and its pipeline constants.
pub(super) struct Job {
    pub(super) kernel: Kernel,
    pub(super) constants: Vec<(&'static str, f64)>,
    /// The uniform block of its first dispatch: llvmpipe folds uniforms that bound loops
    /// into the machine code, so only the same values find the same cache entry.
    pub(super) params: Vec<u8>,
    /// The bytes of each storage buffer that dispatch bound, so that it reads in bounds.
    pub(super) sizes: Vec<u64>,
}

/// The sending end of the helper thread, which opens its device at the first jobs.
pub(super) struct Precompiler {
    jobs: Mutex<Sender<Vec<Job>>>,
    /// Pipelines compiled so far.
    done: Arc<AtomicU64>,
}

impl Precompiler {
    /// A helper for `adapter` where one pays: a CPU adapter on Vulkan, more than one core,
    /// Mesa's shader cache not switched off, and `KILN_PRECOMPILE` not `0`.
    pub(super) fn start(adapter: &wgpu::Adapter, features: wgpu::Features) -> Option<Self> {
        let info = adapter.get_info();
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let wanted = info.device_type == wgpu::DeviceType::Cpu
            && info.backend == wgpu::Backend::Vulkan
            && cores > 1
            && crate::config::precompile()
            && !crate::config::mesa_cache_disabled();
        if !wanted {
            return None;
        }
        let (tx, rx) = mpsc::channel();
        let adapter = adapter.clone();
        let done = Arc::new(AtomicU64::new(0));
        let count = done.clone();
        std::thread::Builder::new()
            .name("kiln precompile".into())
            .spawn(move || serve(&adapter, features, &rx, &count))
            .ok()?;
        Some(Precompiler {
            jobs: Mutex::new(tx),
            done,
        })
    }

    /// Pipelines compiled so far.
    pub(super) fn compiled(&self) -> u64 {
        self.done.load(Ordering::Relaxed)
    }

    /// Queues `jobs`, first to last, but those whose buffers total over `MAX_BYTES` (left
    /// to the queue: copying a data set's size in zeros would cost more than it saves);
    /// nothing waits for them.
    pub(super) fn send(&self, mut jobs: Vec<Job>) {
        jobs.retain(|j| j.sizes.iter().sum::<u64>() <= MAX_BYTES);
        // A helper that could not open its device has hung up: then nothing is lost.
        let _ = self.jobs.lock().map(|tx| tx.send(jobs));
    }
}

/// The helper thread: opens a device at the first jobs and compiles until the sender goes.
fn serve(
    adapter: &wgpu::Adapter,
    features: wgpu::Features,
    rx: &Receiver<Vec<Job>>,
    done: &AtomicU64,
) {
    let Ok(jobs) = rx.recv() else { return };
    let desc = wgpu::DeviceDescriptor {
        label: Some("kiln precompile"),
        required_features: features,
        required_limits: adapter.limits(),
        ..Default::default()
    };
    let Ok((device, queue)) = pollster::block_on(adapter.request_device(&desc)) else {
        return;
    };
    let mut jobs = Some(jobs);
    while let Some(batch) = jobs.take().or_else(|| rx.recv().ok()) {
        for job in &batch {
            compile(&device, &queue, job);
            done.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Builds `job`'s pipeline on `device` and dispatches one workgroup of it, with its first
/// dispatch's parameters over zeroed buffers of the same sizes, which makes llvmpipe
/// compile it as the queue will. Errors are swallowed: the main device reports its own.
fn compile(device: &wgpu::Device, queue: &wgpu::Queue, job: &Job) {
    let k = &job.kernel;
    let scope = device.push_error_scope(wgpu::ErrorFilter::Validation);
    let layout = new_layout(device, k.inputs, k.outputs);
    let pipeline = new_pipeline(device, &layout, k, &job.constants);
    let buffer = |usage, size| {
        device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("kiln precompile"),
            size,
            usage,
            mapped_at_creation: false,
        })
    };
    let params = buffer(
        wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
        PARAM_BYTES,
    );
    queue.write_buffer(&params, 0, &padded(&job.params));
    let storage: Vec<wgpu::Buffer> = job
        .sizes
        .iter()
        .map(|&n| buffer(wgpu::BufferUsages::STORAGE, n.max(16).next_multiple_of(16)))
        .collect();
    let mut entries = vec![wgpu::BindGroupEntry {
        binding: 0,
        resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
            buffer: &params,
            offset: 0,
            size: wgpu::BufferSize::new(PARAM_BYTES),
        }),
    }];
    entries.extend(storage.iter().zip(1..).map(|(b, i)| wgpu::BindGroupEntry {
        binding: i,
        resource: b.as_entire_binding(),
    }));
    let bind = device.create_bind_group(&wgpu::BindGroupDescriptor {
        label: Some("kiln precompile"),
        layout: &layout.bind,
        entries: &entries,
    });
    let mut encoder = device.create_command_encoder(&Default::default());
    {
        let mut pass = encoder.begin_compute_pass(&Default::default());
        pass.set_pipeline(&pipeline);
        pass.set_bind_group(0, &bind, &[0]);
        pass.dispatch_workgroups(1, 1, 1);
    }
    queue.submit([encoder.finish()]);
    let _ = device.poll(wgpu::PollType::wait_indefinitely());
    let _ = pollster::block_on(scope.pop());
}

/// `params` zero-padded to the uniform block's size.
fn padded(params: &[u8]) -> Vec<u8> {
    let mut block = vec![0u8; PARAM_BYTES as usize];
    let n = params.len().min(block.len());
    block[..n].copy_from_slice(&params[..n]);
    block
}
