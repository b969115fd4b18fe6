//! `GpuContext`: device, queue, one compute pipeline per kernel, explicit
//! bind-group layouts, and wgpu errors turned into `anyhow` errors.

use anyhow::{anyhow, bail, Context, Result};
use std::sync::{Arc, Mutex};

/// Every WGSL entry point, with its file and its group-0 bindings
/// (binding number, read-only?). Group 1 is always the one dynamic-offset uniform.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kernel {
    Gather,
    Matmul,
    MatmulReduce,
    ReparamForward,
    ReparamBackward,
    Bce,
    Loss,
    Adam,
}

impl Kernel {
    pub const ALL: [Kernel; 8] = [
        Kernel::Gather,
        Kernel::Matmul,
        Kernel::MatmulReduce,
        Kernel::ReparamForward,
        Kernel::ReparamBackward,
        Kernel::Bce,
        Kernel::Loss,
        Kernel::Adam,
    ];

    /// (file name, WGSL source)
    pub fn source(self) -> (&'static str, &'static str) {
        match self {
            Kernel::Gather => ("gather.wgsl", include_str!("../../shaders/gather.wgsl")),
            Kernel::Matmul | Kernel::MatmulReduce => {
                ("matmul.wgsl", include_str!("../../shaders/matmul.wgsl"))
            }
            Kernel::ReparamForward | Kernel::ReparamBackward => {
                ("reparam.wgsl", include_str!("../../shaders/reparam.wgsl"))
            }
            Kernel::Bce => ("bce.wgsl", include_str!("../../shaders/bce.wgsl")),
            Kernel::Loss => ("loss.wgsl", include_str!("../../shaders/loss.wgsl")),
            Kernel::Adam => ("adam.wgsl", include_str!("../../shaders/adam.wgsl")),
        }
    }

    pub fn entry(self) -> &'static str {
        match self {
            Kernel::Gather => "gather_pixels",
            Kernel::Matmul => "matmul",
            Kernel::MatmulReduce => "matmul_reduce",
            Kernel::ReparamForward => "reparam_forward",
            Kernel::ReparamBackward => "reparam_backward",
            Kernel::Bce => "bce_logits",
            Kernel::Loss => "loss_reduce",
            Kernel::Adam => "adam",
        }
    }

    /// Group-0 storage bindings in the order the backend supplies buffers.
    pub fn bindings(self) -> &'static [(u32, bool)] {
        match self {
            // data, idx → x
            Kernel::Gather => &[(0, true), (1, true), (2, false)],
            // a, b, e → c, or → partial sums when K is split
            Kernel::Matmul => &[(0, true), (1, true), (2, true), (3, false), (4, false)],
            // partial sums, e → c
            Kernel::MatmulReduce => &[(5, true), (2, true), (3, false)],
            // head → z, eps, kl, logpq
            Kernel::ReparamForward => &[(0, true), (1, false), (2, false), (3, false), (8, false)],
            // dz, eps, head → dhead
            Kernel::ReparamBackward => &[(4, true), (5, true), (6, true), (7, false)],
            // x, logits (in/out) → bce
            Kernel::Bce => &[(0, true), (1, false), (2, false)],
            // bce, kl → sample_loss, batch_loss; logpq
            Kernel::Loss => &[(0, true), (1, true), (2, false), (3, false), (4, true)],
            // params (in/out), grads, m, v
            Kernel::Adam => &[(0, false), (1, true), (2, false), (3, false)],
        }
    }
}

/// Size of the uniform window every kernel sees (the largest params struct).
pub const UNIFORM_BYTES: u64 = 64;

/// Compile `entry` of the WGSL `src` into a compute pipeline whose group 0 holds
/// storage buffers at `bindings` (number, read-only?) and group 1 the op-parameter
/// uniform. Validation errors come back as one error naming the file and entry point.
pub fn build_pipeline(
    device: &wgpu::Device,
    uniform_layout: &wgpu::BindGroupLayout,
    file: &str,
    src: &str,
    entry: &str,
    bindings: &[(u32, bool)],
) -> Result<(wgpu::BindGroupLayout, wgpu::ComputePipeline)> {
    let scope = device.push_error_scope(wgpu::ErrorFilter::Validation);
    let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
        label: Some(file),
        source: wgpu::ShaderSource::Wgsl(src.into()),
    });
    let entries: Vec<wgpu::BindGroupLayoutEntry> = bindings
        .iter()
        .map(|&(binding, read_only)| wgpu::BindGroupLayoutEntry {
            binding,
            visibility: wgpu::ShaderStages::COMPUTE,
            ty: wgpu::BindingType::Buffer {
                ty: wgpu::BufferBindingType::Storage { read_only },
                has_dynamic_offset: false,
                min_binding_size: None,
            },
            count: None,
        })
        .collect();
    let bgl = device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
        label: Some(entry),
        entries: &entries,
    });
    let pl = device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
        label: Some(entry),
        bind_group_layouts: &[Some(&bgl), Some(uniform_layout)],
        immediate_size: 0,
    });
    let pipeline = device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
        label: Some(entry),
        layout: Some(&pl),
        module: &module,
        entry_point: Some(entry),
        compilation_options: Default::default(),
        cache: None,
    });
    if let Some(e) = pollster::block_on(scope.pop()) {
        let first = e.to_string();
        let first = first
            .lines()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("")
            .trim()
            .to_string();
        bail!("shader {file}, entry point {entry}: {first}");
    }
    Ok((bgl, pipeline))
}

pub struct GpuContext {
    pub device: wgpu::Device,
    pub queue: wgpu::Queue,
    pub info: wgpu::AdapterInfo,
    pub layouts: Vec<wgpu::BindGroupLayout>,
    pub uniform_layout: wgpu::BindGroupLayout,
    pub pipelines: Vec<wgpu::ComputePipeline>,
    /// first uncaptured wgpu error (validation, out of memory), reported by `check`
    errors: Arc<Mutex<Option<String>>>,
    lost: Arc<Mutex<Option<String>>>,
}

impl GpuContext {
    /// Open a device on `adapter` with the limits vae-ood needs (`max_buffer` bytes
    /// for the largest storage buffer) and build every pipeline.
    pub fn new(adapter: wgpu::Adapter, max_buffer: u64) -> Result<GpuContext> {
        let info = adapter.get_info();
        let have = adapter.limits();
        if have.max_storage_buffer_binding_size < max_buffer || have.max_buffer_size < max_buffer {
            bail!(
                "GPU adapter {} allows storage buffers of {} bytes; vae-ood needs {max_buffer}",
                info.name,
                have.max_storage_buffer_binding_size
                    .min(have.max_buffer_size)
            );
        }
        // WebGPU's default limits (which lavapipe and every desktop GPU meet), with the
        // storage-buffer size raised to what the image store needs.
        let mut limits = wgpu::Limits::default();
        limits.max_storage_buffer_binding_size =
            limits.max_storage_buffer_binding_size.max(max_buffer);
        limits.max_buffer_size = limits.max_buffer_size.max(max_buffer);
        let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
            label: Some("vae-ood"),
            required_features: wgpu::Features::empty(),
            required_limits: limits,
            ..Default::default()
        }))
        .with_context(|| format!("cannot open GPU device {}", info.name))?;

        let errors: Arc<Mutex<Option<String>>> = Arc::new(Mutex::new(None));
        let e2 = errors.clone();
        device.on_uncaptured_error(Arc::new(move |e: wgpu::Error| {
            let mut slot = e2.lock().unwrap();
            if slot.is_none() {
                *slot = Some(e.to_string());
            }
        }));
        let lost: Arc<Mutex<Option<String>>> = Arc::new(Mutex::new(None));
        let l2 = lost.clone();
        device.set_device_lost_callback(move |reason, msg| {
            *l2.lock().unwrap() = Some(format!("{reason:?}: {msg}"));
        });

        let uniform_layout = device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
            label: Some("params uniform"),
            entries: &[wgpu::BindGroupLayoutEntry {
                binding: 0,
                visibility: wgpu::ShaderStages::COMPUTE,
                ty: wgpu::BindingType::Buffer {
                    ty: wgpu::BufferBindingType::Uniform,
                    has_dynamic_offset: true,
                    min_binding_size: None,
                },
                count: None,
            }],
        });
        let mut layouts = Vec::new();
        let mut pipelines = Vec::new();
        for k in Kernel::ALL {
            let (file, src) = k.source();
            let (bgl, pipeline) =
                build_pipeline(&device, &uniform_layout, file, src, k.entry(), k.bindings())?;
            layouts.push(bgl);
            pipelines.push(pipeline);
        }
        log::info!(
            "GPU {} ({:?}, {:?}): {} pipelines, max storage binding {} MiB",
            info.name,
            info.device_type,
            info.backend,
            pipelines.len(),
            device.limits().max_storage_buffer_binding_size >> 20
        );
        Ok(GpuContext {
            device,
            queue,
            info,
            layouts,
            uniform_layout,
            pipelines,
            errors,
            lost,
        })
    }

    pub fn pipeline(&self, k: Kernel) -> &wgpu::ComputePipeline {
        &self.pipelines[k as usize]
    }
    pub fn layout(&self, k: Kernel) -> &wgpu::BindGroupLayout {
        &self.layouts[k as usize]
    }

    /// Turn a recorded wgpu error or a lost device into an error.
    pub fn check(&self, what: &str) -> Result<()> {
        if let Some(m) = self.lost.lock().unwrap().clone() {
            return Err(anyhow!("GPU device lost during {what}: {m}"));
        }
        if let Some(m) = self.errors.lock().unwrap().take() {
            return Err(anyhow!(
                "GPU error during {what}: {}",
                m.lines().next().unwrap_or("")
            ));
        }
        Ok(())
    }

    /// Wait for all submitted work.
    pub fn wait(&self, what: &str) -> Result<()> {
        self.device
            .poll(wgpu::PollType::wait_indefinitely())
            .map_err(|e| anyhow!("GPU wait failed during {what}: {e}"))?;
        self.check(what)
    }
}
