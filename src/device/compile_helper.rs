//! The helper process's side of `precompile`: it opens the adapter its parent named,
//! compiles each pipeline it is sent by dispatching it once, and answers with the job's
//! id, until its input closes.

use std::collections::HashMap;
use std::io::{BufRead, Write};

use serde::{Deserialize, Serialize};

use super::gpu::{new_layout, new_pipeline, param_block, Code, PARAM_BYTES};

/// A job as it travels to a helper: one JSON line on its standard input. The helper
/// answers with the `id` on a line of its own once the pipeline is compiled.
#[derive(Serialize, Deserialize)]
pub(super) struct Wire {
    pub(super) id: u64,
    pub(super) source: String,
    pub(super) entry: String,
    pub(super) inputs: u32,
    pub(super) outputs: u32,
    pub(super) bounds_checks: bool,
    pub(super) constants: Vec<(String, f64)>,
    /// The uniform block of its first dispatch: llvmpipe folds uniforms that bound loops
    /// into the machine code, so only the same values find the same cache entry.
    pub(super) params: Vec<u8>,
    /// The bytes of each storage buffer that dispatch bound, so that it reads in bounds.
    pub(super) sizes: Vec<u64>,
}

/// A helper: opens the adapter its parent named and compiles each job it is sent,
/// answering with its id, until its input closes.
pub(super) fn serve() {
    let Some((device, queue)) = open() else {
        return;
    };
    let mut helper = Helper {
        device,
        queue,
        buffers: HashMap::new(),
    };
    let mut out = std::io::stdout().lock();
    for line in std::io::stdin().lock().lines().map_while(|l| l.ok()) {
        let Ok(job) = serde_json::from_str::<Wire>(&line) else {
            continue;
        };
        helper.compile(&job);
        if writeln!(out, "{}", job.id)
            .and_then(|()| out.flush())
            .is_err()
        {
            return;
        }
    }
}

/// The device the parent named through `KILN_ADAPTER` and `KILN_BACKEND`, with the
/// features kiln's own devices ask for, since they change the code compiled.
fn open() -> Option<(wgpu::Device, wgpu::Queue)> {
    let instance = super::adapter::instance().ok()?;
    let adapter = super::adapter::choose(&instance, super::adapter::Pick::Best(None)).ok()?;
    let desc = wgpu::DeviceDescriptor {
        label: Some("kiln compile helper"),
        required_features: super::gpu::wanted_features(&adapter),
        required_limits: adapter.limits(),
        ..Default::default()
    };
    pollster::block_on(adapter.request_device(&desc)).ok()
}

/// The helper's device, with the buffers it has made, kept for the next job that binds
/// one of the same size at the same binding.
struct Helper {
    device: wgpu::Device,
    queue: wgpu::Queue,
    buffers: HashMap<(u32, u64), wgpu::Buffer>,
}

impl Helper {
    /// Builds `job`'s pipeline and dispatches one workgroup of it, with its first
    /// dispatch's parameters over buffers of the same sizes, which makes llvmpipe compile
    /// it as the parent's queue will. Errors are dropped: the parent reports its own.
    fn compile(&mut self, job: &Wire) {
        let scope = self.device.push_error_scope(wgpu::ErrorFilter::Validation);
        let device = &self.device;
        let layout = new_layout(device, job.inputs, job.outputs);
        let code = Code {
            source: &job.source,
            entry: &job.entry,
            bounds_checks: job.bounds_checks,
        };
        let constants: Vec<(&str, f64)> = job
            .constants
            .iter()
            .map(|(n, v)| (n.as_str(), *v))
            .collect();
        let pipeline = new_pipeline(device, &layout, &code, &constants);
        let params = device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("kiln compile helper"),
            size: PARAM_BYTES,
            usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        self.queue
            .write_buffer(&params, 0, &param_block(&job.params));
        // What the buffers hold does not matter, only that every access stays in bounds.
        // One buffer per binding: a buffer bound twice, read-only and read-write, would
        // fail validation and leave the pipeline uncompiled.
        for (&n, i) in job.sizes.iter().zip(1u32..) {
            self.buffers.entry((i, n)).or_insert_with(|| {
                device.create_buffer(&wgpu::BufferDescriptor {
                    label: Some("kiln compile helper"),
                    size: n.max(16).next_multiple_of(16),
                    usage: wgpu::BufferUsages::STORAGE,
                    mapped_at_creation: false,
                })
            });
        }
        let mut entries = vec![wgpu::BindGroupEntry {
            binding: 0,
            resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                buffer: &params,
                offset: 0,
                size: wgpu::BufferSize::new(PARAM_BYTES),
            }),
        }];
        entries.extend(job.sizes.iter().zip(1..).filter_map(|(n, i)| {
            Some(wgpu::BindGroupEntry {
                binding: i,
                resource: self.buffers.get(&(i, *n))?.as_entire_binding(),
            })
        }));
        let bind = device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some("kiln compile helper"),
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
        self.queue.submit([encoder.finish()]);
        let _ = device.poll(wgpu::PollType::wait_indefinitely());
        let _ = pollster::block_on(scope.pop());
    }
}
