//! `kiln adapters`: the GPU adapters wgpu can see, with the limits that bound kiln.

use kiln::{list_adapters, Result};

/// The long help of `kiln adapters`.
pub const LONG_ABOUT: &str = "\
List the GPU adapters kiln can use, with their limits.

`--device gpu` picks the best adapter (discrete, then integrated, virtual,
software); `--device gpu:NAME` picks one whose name contains NAME. The
KILN_BACKEND variable (vulkan, metal, dx12, gl) narrows the list, and
KILN_ADAPTER sets the default name filter. The largest storage binding bounds
the largest tensor (batch x layer width) kiln can place on the adapter.";

/// Runs `kiln adapters`.
pub fn run() -> Result<()> {
    let adapters = list_adapters()?;
    if adapters.is_empty() {
        say!(
            "No GPU adapter found. Install a Vulkan driver (on Debian or Ubuntu without a GPU: \
             apt-get install mesa-vulkan-drivers, for the lavapipe software adapter), or train \
             with --device cpu."
        );
        return Ok(());
    }
    for (i, a) in adapters.iter().enumerate() {
        say!("{}. {}", i + 1, a.name);
        say!("   backend:             {} ({})", a.backend, a.device_type);
        say!("   driver:              {}", a.driver);
        say!(
            "   max storage binding: {} MiB",
            a.max_storage_binding >> 20
        );
        say!("   max buffer:          {} MiB", a.max_buffer >> 20);
    }
    Ok(())
}
