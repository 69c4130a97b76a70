//! Every `KILN_*` environment variable the library reads, read here and nowhere else, so
//! one file (and the README's table, which a test keeps in step with [`VARIABLES`]) says
//! what can change kiln's behaviour from outside the program.

use std::ffi::OsString;

/// The variables, each with what it does: the source of the README's configuration table.
pub const VARIABLES: [(&str, &str); 6] = [
    (
        "KILN_ADAPTER",
        "substring of the adapter name Device::gpu() picks",
    ),
    (
        "KILN_BACKEND",
        "the wgpu backends to look at: vulkan, metal, dx12, gl",
    ),
    (
        "KILN_AUTOTUNE",
        "1/on: matmul tuning on every adapter; 0/off: on none; retune: time every class again",
    ),
    ("KILN_CACHE_DIR", "the folder of the matmul autotune cache"),
    (
        "KILN_PRECOMPILE",
        "0/off: CPU adapters compile new kernels in the training process only (default: helper processes)",
    ),
    (
        "KILN_PROFILE",
        "1: time every kernel on the GPU (slow, for diagnosis)",
    ),
];

/// A variable's value, if set (not necessarily valid Unicode).
fn os(name: &str) -> Option<OsString> {
    std::env::var_os(name)
}

/// A variable's value as text, if set and valid Unicode.
fn text(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

/// `KILN_ADAPTER`: the adapter-name filter, if set.
pub fn adapter() -> Option<String> {
    text("KILN_ADAPTER")
}

/// `KILN_BACKEND`: the backend list, if set.
pub fn backend() -> Option<String> {
    text("KILN_BACKEND")
}

/// `KILN_AUTOTUNE`: the tuner's mode, if set.
pub fn autotune() -> Option<String> {
    text("KILN_AUTOTUNE")
}

/// `KILN_CACHE_DIR`: the autotune cache folder, if set and not empty.
pub fn cache_dir() -> Option<OsString> {
    os("KILN_CACHE_DIR").filter(|v| !v.is_empty())
}

/// `KILN_PROFILE`: whether every kernel is timed (`1`).
pub fn profile() -> bool {
    text("KILN_PROFILE").is_some_and(|v| v == "1")
}

/// `KILN_PRECOMPILE`: whether CPU adapters may compile kernels in helper processes (on
/// unless `0` or `off`).
pub fn precompile() -> bool {
    !text("KILN_PRECOMPILE").is_some_and(|v| v == "0" || v.eq_ignore_ascii_case("off"))
}

/// Whether Mesa's shader cache is switched off (`MESA_SHADER_CACHE_DISABLE`), which
/// leaves nothing for a helper's compilations to be found in.
pub fn mesa_cache_disabled() -> bool {
    text("MESA_SHADER_CACHE_DISABLE")
        .is_some_and(|v| matches!(v.to_ascii_lowercase().as_str(), "1" | "true" | "yes" | "y"))
}
