//! The wgpu side: adapter choice, the context that owns device, queue and the
//! compute pipelines (one per WGSL entry point, with explicit bind-group layouts),
//! and the backend that records whole epochs into one compute pass.

mod backend;
mod context;
mod lower;
pub mod persistent;

pub use backend::GpuBackend;
pub use context::{
    build_pipeline, coop_support, coop_workgroup_bytes, persistent_refusal, Assembled, Coop,
    FeatureUse, GpuContext, GpuOptions, Kernel, Partials, PersistentGroups, Reduce, ShaderChecks,
    Subgroups, Walk, NO_SUBGROUPS_ENV,
};
pub use lower::{choose_splits, Fusions};

use anyhow::{bail, Result};

/// The wgpu backends vae-ood runs on: all but OpenGL. On wgpu's GL backend the
/// kernels once computed wrong results (2026-11-27, Mesa 22.3's llvmpipe GL 4.5: a
/// training epoch's loss 0.0000): naga's GLSL output ignores struct members'
/// explicit offsets (gfx-rs/wgpu#4374), and two uniform slots padded with `@size`
/// were read at the wrong offsets. They now spell their padding out, and on GL the
/// kernels' and training tests then give the right results; but GL is not tested in
/// CI, offers no subgroups, has too few storage bindings for some fused kernels, and
/// compiles some variants to other bits than their twins (the column of ones). So a
/// machine whose only adapter is a GL one has no GPU adapter here (`auto` runs the
/// CPU backend), and `vae-ood devices` marks GL adapters unused.
pub const BACKENDS: wgpu::Backends = wgpu::Backends::all().difference(wgpu::Backends::GL);

/// Why GL adapters are not used, as `vae-ood devices` and the error for
/// `WGPU_BACKEND=gl` say it.
pub const GL_NOT_USED: &str = "vae-ood does not run on wgpu's OpenGL backend (not tested there; naga's GLSL output has known layout bugs, gfx-rs/wgpu#4374)";

/// Whether an adapter is a software one (lavapipe, WARP, SwiftShader): `auto`
/// passes it over for the CPU backend, and the persistent step takes one
/// workgroup there (a thread pool promises no two workgroups run at once).
pub fn is_software(info: &wgpu::AdapterInfo) -> bool {
    info.device_type == wgpu::DeviceType::Cpu
}

/// Whether vae-ood runs on adapters of backend `b` ([`BACKENDS`]).
pub fn backend_used(b: wgpu::Backend) -> bool {
    BACKENDS.contains(b.into())
}

/// The wgpu instance as configured by the environment (`WGPU_BACKEND`, …), limited
/// to `backends`.
fn instance(backends: wgpu::Backends) -> wgpu::Instance {
    let mut desc = wgpu::InstanceDescriptor::new_without_display_handle_from_env();
    desc.backends &= backends;
    wgpu::Instance::new(desc)
}

/// The one instance of [`BACKENDS`] that [`select_adapter`] asks in this process.
/// On an NVIDIA H200 (2026-11-27) the GPU test binaries, opening backends with a
/// new instance each, stopped finding any adapter partway (every later test
/// failed with "no GPU adapter found"); with one instance per process they ran
/// through, twice. What ran out is not pinned down: `examples/device_churn.rs`
/// opened 100 fresh instances, adapters and devices in a row there without a
/// failure or a growing count of file descriptors, threads or memory.
pub fn shared_instance() -> &'static wgpu::Instance {
    static INSTANCE: std::sync::OnceLock<wgpu::Instance> = std::sync::OnceLock::new();
    INSTANCE.get_or_init(|| instance(BACKENDS))
}

/// Every adapter wgpu can see, GL ones included (see [`backend_used`]), with the
/// optional features vae-ood would use on it (options from the environment, but
/// `VAE_OOD_GPU_COOP=1` taken as unset: it is an error only where a device is
/// opened).
pub fn list_adapters() -> Vec<(wgpu::AdapterInfo, FeatureUse)> {
    let inst = instance(wgpu::Backends::all());
    let env = GpuOptions::from_env();
    let opts = GpuOptions {
        coop: match env.coop {
            Coop::Require => Coop::Auto,
            c => c,
        },
        ..env
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
    if let Some(asked) = wgpu::Backends::from_env() {
        if !asked.is_empty() && !asked.intersects(BACKENDS) {
            bail!(
                "WGPU_BACKEND={:?} names only OpenGL: {GL_NOT_USED}; use vulkan, metal or dx12, or --device cpu",
                std::env::var("WGPU_BACKEND").unwrap_or_default()
            );
        }
    }
    let inst = shared_instance();
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
            inst, None,
        ))
        .ok(),
    )
}

pub fn no_adapter_error() -> anyhow::Error {
    anyhow::anyhow!(
        "no GPU adapter found: install a Vulkan driver (Debian/Ubuntu: apt-get install mesa-vulkan-drivers libvulkan1) or use --device cpu"
    )
}
