//! Where tensors live and ops run: a GPU through wgpu, or the CPU reference backend.

mod adapter;
mod compile_helper;
mod gpu;
mod precompile;

use std::sync::Arc;

use adapter::Pick;
pub use adapter::{list_adapters, AdapterSummary};
pub(crate) use gpu::PendingRead;
pub use gpu::{GpuContext, Stats};
pub(crate) use gpu::{Kernel, Span};
pub use precompile::{compile_helper_main, use_compile_helper};

use crate::error::Result;

/// A compute device. Cloning is cheap and shares the same GPU context.
#[derive(Clone)]
pub enum Device {
    /// The CPU reference backend: plain Rust loops, the oracle for every GPU kernel.
    Cpu,
    /// A wgpu device.
    Gpu(Arc<GpuContext>),
}

impl std::fmt::Debug for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Device::Cpu => write!(f, "Device::Cpu"),
            Device::Gpu(g) => write!(f, "Device::Gpu({} on {:?})", g.info.name, g.info.backend),
        }
    }
}

impl Device {
    /// The best GPU adapter: discrete > integrated > virtual > software.
    ///
    /// `KILN_ADAPTER` (a substring of the adapter name) and `KILN_BACKEND`
    /// (vulkan, metal, dx12, gl) narrow the choice.
    pub fn gpu() -> Result<Device> {
        Ok(Device::Gpu(Arc::new(GpuContext::new(Pick::Best(None))?)))
    }

    /// The best GPU adapter whose name contains `name` (case-insensitive).
    pub fn gpu_named(name: &str) -> Result<Device> {
        Ok(Device::Gpu(Arc::new(GpuContext::new(Pick::Best(Some(
            name,
        )))?)))
    }

    /// The `n`-th adapter, wrapping around, among those of the best kind (as
    /// [`Device::gpu`] ranks them) in wgpu's order: rank `n` of a data-parallel job on
    /// its own GPU where the machine has enough.
    pub fn gpu_nth(n: usize) -> Result<Device> {
        Ok(Device::Gpu(Arc::new(GpuContext::new(Pick::Nth(n))?)))
    }

    /// The CPU reference backend.
    pub fn cpu() -> Device {
        Device::Cpu
    }

    /// The device named by `spec`: "cpu", "gpu", or "gpu:NAME" for an adapter name substring.
    pub fn from_name(spec: &str) -> Result<Device> {
        match spec {
            "cpu" => Ok(Device::Cpu),
            "gpu" | "" => Device::gpu(),
            _ => match spec.strip_prefix("gpu:") {
                Some(name) => Device::gpu_named(name),
                None => Err(crate::Error::arg(
                    "device",
                    format!("'{spec}' is not cpu, gpu or gpu:NAME"),
                )),
            },
        }
    }

    /// True for the CPU reference backend.
    pub fn is_cpu(&self) -> bool {
        matches!(self, Device::Cpu)
    }

    /// The GPU context, if this is a GPU device.
    pub fn gpu_context(&self) -> Option<&Arc<GpuContext>> {
        match self {
            Device::Gpu(g) => Some(g),
            Device::Cpu => None,
        }
    }

    /// A one-line description of the device.
    pub fn name(&self) -> String {
        match self {
            Device::Cpu => "cpu (reference backend)".into(),
            Device::Gpu(g) => format!(
                "{} ({:?}, {:?})",
                g.info.name, g.info.backend, g.info.device_type
            ),
        }
    }

    /// Submits the work recorded so far (no-op on the CPU), without waiting for it;
    /// reports a lost device or a GPU error seen so far.
    pub fn flush(&self) -> Result<()> {
        match self {
            Device::Gpu(g) => g.flush(),
            Device::Cpu => Ok(()),
        }
    }

    /// Waits until all submitted work has finished and reports any GPU error.
    pub fn synchronize(&self) -> Result<()> {
        match self {
            Device::Gpu(g) => g.synchronize(),
            Device::Cpu => Ok(()),
        }
    }

    /// Destroys the GPU device now, as a driver reset or a removed card would: every later
    /// call on it fails with [`Error::DeviceLost`](crate::Error::DeviceLost). For tests of
    /// how a program recovers; a no-op on the CPU.
    pub fn simulate_loss(&self) {
        if let Device::Gpu(g) = self {
            g.device.destroy();
        }
    }

    /// GPU time per kernel and grid since the last call, most first: (kernel and grid,
    /// dispatches, time). Filled only under `KILN_PROFILE=1` on an adapter with timestamps,
    /// which runs every dispatch in a timed submission of its own (slow; for diagnosis).
    pub fn take_profile(&self) -> Vec<(String, u64, std::time::Duration)> {
        match self {
            Device::Gpu(g) => g.take_profile(),
            Device::Cpu => Vec::new(),
        }
    }

    /// Submission, dispatch, readback and memory counters (zero on the CPU).
    pub fn stats(&self) -> Stats {
        match self {
            Device::Gpu(g) => g.stats(),
            Device::Cpu => Stats::default(),
        }
    }

    /// The most f32 values one tensor may hold on this device (its binding limit).
    pub fn max_tensor_len(&self) -> usize {
        match self {
            Device::Gpu(g) => {
                let bytes = g
                    .limits
                    .max_storage_buffer_binding_size
                    .min(g.limits.max_buffer_size);
                (bytes / 4) as usize
            }
            Device::Cpu => usize::MAX,
        }
    }

    /// True when both handles refer to the same device.
    pub fn same(&self, other: &Device) -> bool {
        match (self, other) {
            (Device::Cpu, Device::Cpu) => true,
            (Device::Gpu(a), Device::Gpu(b)) => Arc::ptr_eq(a, b),
            _ => false,
        }
    }
}
