//! The wgpu side: adapter choice, the context that owns device, queue and the
//! compute pipelines (one per WGSL entry point, with explicit bind-group layouts),
//! and the backend that records whole epochs into one compute pass.

mod backend;
mod context;
mod lower;

pub use backend::GpuBackend;
pub use context::{
    build_pipeline, coop_support, coop_workgroup_bytes, Assembled, FeatureUse, GpuContext,
    GpuOptions, Kernel, Reduce, ShaderChecks, Subgroups, Walk, NO_SUBGROUPS_ENV,
};
pub use lower::{choose_splits, Fusions};

use anyhow::{bail, Result};

/// The wgpu instance as configured by the environment (`WGPU_BACKEND`, …).
pub fn instance() -> wgpu::Instance {
    wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle_from_env())
}

/// Every adapter wgpu can see, with the optional features vae-ood would use on it
/// (options from the environment, but tensor cores only said to be offered or
/// not: `VAE_OOD_GPU_COOP=1` is an error only where a device is opened).
pub fn list_adapters() -> Vec<(wgpu::AdapterInfo, FeatureUse)> {
    let inst = instance();
    let opts = GpuOptions {
        coop: false,
        ..GpuOptions::from_env()
    };
    pollster::block_on(inst.enumerate_adapters(wgpu::Backends::all()))
        .iter()
        .map(|a| {
            let f = FeatureUse::of(a, opts).expect("only Subgroups::Require can fail");
            (a.get_info(), f)
        })
        .collect()
}

/// The adapter wgpu would pick, honouring `WGPU_ADAPTER_NAME`, `WGPU_BACKEND` and
/// `WGPU_POWER_PREF` (semantics of `wgpu::util::initialize_adapter_from_env_or_default`).
/// `Ok(None)` when there is none; an error when `WGPU_ADAPTER_NAME` matches nothing
/// (wgpu itself would panic there).
pub fn select_adapter() -> Result<Option<wgpu::Adapter>> {
    let inst = instance();
    if let Ok(name) = std::env::var("WGPU_ADAPTER_NAME") {
        let want = name.to_lowercase();
        let adapters = pollster::block_on(inst.enumerate_adapters(wgpu::Backends::all()));
        if !adapters
            .iter()
            .any(|a| a.get_info().name.to_lowercase().contains(&want))
        {
            let names: Vec<String> = adapters
                .iter()
                .map(|a| {
                    let i = a.get_info();
                    format!("{} ({:?})", i.name, i.backend)
                })
                .collect();
            bail!(
                "WGPU_ADAPTER_NAME={name:?} matches no adapter (found: {})",
                if names.is_empty() {
                    "none".to_string()
                } else {
                    names.join(", ")
                }
            );
        }
    }
    Ok(
        pollster::block_on(wgpu::util::initialize_adapter_from_env_or_default(
            &inst, None,
        ))
        .ok(),
    )
}

pub fn no_adapter_error() -> anyhow::Error {
    anyhow::anyhow!(
        "no GPU adapter found: install a Vulkan driver (Debian/Ubuntu: apt-get install mesa-vulkan-drivers libvulkan1) or use --device cpu"
    )
}
