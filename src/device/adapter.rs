//! Finding and ranking the machine's GPU adapters.

use crate::error::{Error, Result};

/// What kiln knows about one adapter, for listing and choosing.
#[derive(Debug, Clone)]
pub struct AdapterSummary {
    /// Adapter name as the driver reports it.
    pub name: String,
    /// Graphics API: Vulkan, Metal, Dx12 or Gl.
    pub backend: String,
    /// Discrete, integrated, virtual, CPU (software) or other.
    pub device_type: String,
    /// Driver name and version.
    pub driver: String,
    /// Largest storage buffer one binding may cover, in bytes.
    pub max_storage_binding: u64,
    /// Largest buffer, in bytes.
    pub max_buffer: u64,
}

impl AdapterSummary {
    fn of(adapter: &wgpu::Adapter) -> Self {
        let info = adapter.get_info();
        let limits = adapter.limits();
        AdapterSummary {
            name: info.name,
            backend: format!("{:?}", info.backend),
            device_type: format!("{:?}", info.device_type),
            driver: format!("{} {}", info.driver, info.driver_info)
                .trim()
                .to_string(),
            max_storage_binding: limits.max_storage_buffer_binding_size,
            max_buffer: limits.max_buffer_size,
        }
    }
}

impl std::fmt::Display for AdapterSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} [{} {}] driver: {}; max storage binding {} MiB, max buffer {} MiB",
            self.name,
            self.backend,
            self.device_type,
            self.driver,
            self.max_storage_binding >> 20,
            self.max_buffer >> 20
        )
    }
}

/// Backends named by `KILN_BACKEND`, or all of them.
fn backends_from_env() -> Result<wgpu::Backends> {
    let Some(value) = crate::config::backend() else {
        return Ok(wgpu::Backends::all());
    };
    let mut backends = wgpu::Backends::empty();
    for part in value.split(',').map(|s| s.trim().to_ascii_lowercase()) {
        backends |= match part.as_str() {
            "vulkan" | "vk" => wgpu::Backends::VULKAN,
            "metal" => wgpu::Backends::METAL,
            "dx12" | "d3d12" => wgpu::Backends::DX12,
            "gl" | "gles" | "opengl" => wgpu::Backends::GL,
            _ => {
                return Err(Error::BadEnv {
                    var: "KILN_BACKEND",
                    value,
                    expected: "one or more of vulkan, metal, dx12, gl, separated by commas",
                })
            }
        };
    }
    Ok(backends)
}

pub(crate) fn instance() -> Result<wgpu::Instance> {
    let mut desc = wgpu::InstanceDescriptor::new_without_display_handle_from_env();
    desc.backends = backends_from_env()?;
    Ok(wgpu::Instance::new(desc))
}

/// Higher is better: discrete > integrated > virtual > software.
fn rank(info: &wgpu::AdapterInfo) -> u32 {
    let kind = match info.device_type {
        wgpu::DeviceType::DiscreteGpu => 40,
        wgpu::DeviceType::IntegratedGpu => 30,
        wgpu::DeviceType::VirtualGpu => 20,
        wgpu::DeviceType::Cpu => 10,
        wgpu::DeviceType::Other => 0,
    };
    // GL is the fallback API: prefer any other on the same hardware.
    let api = u32::from(info.backend != wgpu::Backend::Gl);
    kind + api
}

/// Lists every adapter wgpu can see (respecting `KILN_BACKEND`).
pub fn list_adapters() -> Result<Vec<AdapterSummary>> {
    let instance = instance()?;
    let adapters = pollster::block_on(instance.enumerate_adapters(wgpu::Backends::all()));
    Ok(adapters.iter().map(AdapterSummary::of).collect())
}

/// Which adapter to open.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Pick<'a> {
    /// The best adapter whose name contains this (default: `KILN_ADAPTER`).
    Best(Option<&'a str>),
    /// The n-th adapter of the best kind (wrapping around): one GPU per rank of a job.
    Nth(usize),
}

/// Picks the adapter `pick` asks for among those `KILN_BACKEND` and `KILN_ADAPTER` allow.
pub(crate) fn choose(instance: &wgpu::Instance, pick: Pick<'_>) -> Result<wgpu::Adapter> {
    let adapters = pollster::block_on(instance.enumerate_adapters(wgpu::Backends::all()));
    let filter = match pick {
        Pick::Best(Some(n)) => Some(n.to_lowercase()),
        _ => crate::config::adapter().map(|s| s.to_lowercase()),
    };
    let names: Vec<String> = adapters
        .iter()
        .map(|a| AdapterSummary::of(a).to_string())
        .collect();
    let mut allowed: Vec<wgpu::Adapter> = adapters
        .into_iter()
        .filter(|a| match &filter {
            Some(f) => a.get_info().name.to_lowercase().contains(f.as_str()),
            None => true,
        })
        .collect();
    let best = match pick {
        Pick::Best(_) => allowed.into_iter().max_by_key(|a| rank(&a.get_info())),
        Pick::Nth(n) => {
            // Only the best kind, so that a second rank on a one-GPU machine shares the
            // GPU rather than falling back to its GL view or a software adapter.
            let top = allowed.iter().map(|a| rank(&a.get_info())).max();
            allowed.retain(|a| Some(rank(&a.get_info())) == top);
            let len = allowed.len().max(1);
            allowed.into_iter().nth(n % len)
        }
    };
    best.ok_or_else(|| {
        let seen = if names.is_empty() {
            "no adapters at all".to_string()
        } else {
            format!("adapters seen: {}", names.join("; "))
        };
        let found = match filter {
            Some(f) => format!("none matches KILN_ADAPTER='{f}' ({seen})"),
            None => seen,
        };
        Error::NoAdapter { found }
    })
}
