//! What the kernel experiments that count on the GPU share (`grid_sync`,
//! `last_block`, `persistent_chain`): their device (with `@coherent` buffers),
//! buffers, pipelines and bind groups, and one timed submission that reads a
//! buffer back (a u32 count, or a whole result). Not an example of its own (cargo
//! builds only the files directly in examples/).
// (each experiment includes this module and uses only part of it)
#![allow(dead_code)]

use std::time::{Duration, Instant};

/// The adapter's device, with `Features::MEMORY_DECORATION_COHERENT` where the
/// adapter offers it (wgpu 30 offers it on every Vulkan adapter): then a storage
/// buffer can be declared `@coherent` (SPIR-V's `Coherent` decoration: its loads
/// see other invocations' stores made visible by a barrier, instead of being served
/// from the reader's cache). Whether it was enabled is the third value.
pub fn device_with_coherent(
    adapter: &wgpu::Adapter,
) -> anyhow::Result<(wgpu::Device, wgpu::Queue, bool)> {
    let (device, queue, coherent, _) = device_with(adapter, false)?;
    Ok((device, queue, coherent))
}

/// [`device_with_coherent`], and with `coop` also the tensor cores' features
/// (cooperative matrices, f16 in shaders; wgpu then enables the device's Vulkan
/// memory model) where the walk can use the adapter's ([`vae_ood::gpu::coop_support`]):
/// then a module may use cooperative-matrix types, and naga declares the Vulkan
/// memory model in the entry points that do. Whether `@coherent` and whether the
/// tensor cores were enabled, with the fragment size (8 or 16), are the last values.
pub fn device_with(
    adapter: &wgpu::Adapter,
    coop: bool,
) -> anyhow::Result<(wgpu::Device, wgpu::Queue, bool, Option<u32>)> {
    let coherent = adapter
        .features()
        .contains(wgpu::Features::MEMORY_DECORATION_COHERENT);
    let frag = if coop {
        vae_ood::gpu::coop_support(adapter).ok().map(|(f, _)| f)
    } else {
        None
    };
    let mut required_features = wgpu::Features::empty();
    if coherent {
        required_features |= wgpu::Features::MEMORY_DECORATION_COHERENT;
    }
    let experimental_features = if frag.is_some() {
        required_features |=
            wgpu::Features::EXPERIMENTAL_COOPERATIVE_MATRIX | wgpu::Features::SHADER_F16;
        // SAFETY: wgpu marks cooperative matrices experimental (bugs in them may be
        // unsound); the probes only declare a fragment to put their entry point
        // under the Vulkan memory model, and compare every result with the
        // dispatch chain's
        unsafe { wgpu::ExperimentalFeatures::enabled() }
    } else {
        wgpu::ExperimentalFeatures::disabled()
    };
    let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
        required_features,
        experimental_features,
        ..Default::default()
    }))?;
    Ok((device, queue, coherent, frag))
}

/// A storage buffer that can be cleared and copied from.
pub fn storage(device: &wgpu::Device, label: &str, size: u64) -> wgpu::Buffer {
    device.create_buffer(&wgpu::BufferDescriptor {
        label: Some(label),
        size,
        usage: wgpu::BufferUsages::STORAGE
            | wgpu::BufferUsages::COPY_SRC
            | wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    })
}

/// The compute pipeline of `module`'s entry point `entry` (with the layout
/// derived from the shader where `layout` is None).
pub fn compute_pipeline(
    device: &wgpu::Device,
    layout: Option<&wgpu::PipelineLayout>,
    module: &wgpu::ShaderModule,
    entry: &str,
) -> wgpu::ComputePipeline {
    device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
        label: Some(entry),
        layout,
        module,
        entry_point: Some(entry),
        compilation_options: Default::default(),
        cache: None,
    })
}

/// A bind group of `buffers`, whole, at bindings 0, 1, 2, … in that order.
pub fn bind_buffers(
    device: &wgpu::Device,
    label: &str,
    layout: &wgpu::BindGroupLayout,
    buffers: &[&wgpu::Buffer],
) -> wgpu::BindGroup {
    let entries: Vec<wgpu::BindGroupEntry> = buffers
        .iter()
        .enumerate()
        .map(|(i, b)| wgpu::BindGroupEntry {
            binding: i as u32,
            resource: b.as_entire_binding(),
        })
        .collect();
    device.create_bind_group(&wgpu::BindGroupDescriptor {
        label: Some(label),
        layout,
        entries: &entries,
    })
}

/// A uniform buffer of `size` bytes for an experiment's parameters.
pub fn params(device: &wgpu::Device, size: u64) -> wgpu::Buffer {
    device.create_buffer(&wgpu::BufferDescriptor {
        label: Some("params"),
        size,
        usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    })
}

/// A count on the GPU (one u32 in a storage buffer) and the staging buffer it
/// is read back through.
pub struct Count {
    pub on_gpu: wgpu::Buffer,
    staging: wgpu::Buffer,
}

impl Count {
    pub fn new(device: &wgpu::Device, label: &str) -> Count {
        Count {
            on_gpu: storage(device, label, 4),
            staging: device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("staging"),
                size: 4,
                usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            }),
        }
    }

    /// Submits `enc` (which should have cleared the count first) with the count's
    /// copy to staging after it, waits for the GPU, and returns the time from
    /// submission to the end of the wait and the count.
    pub fn submit_and_read(
        &self,
        device: &wgpu::Device,
        queue: &wgpu::Queue,
        enc: wgpu::CommandEncoder,
    ) -> anyhow::Result<(Duration, u32)> {
        let (took, bytes) = submit_and_read(device, queue, enc, &self.on_gpu, &self.staging)?;
        Ok((took, bytemuck::cast_slice::<u8, u32>(&bytes)[0]))
    }
}

/// Submits `enc` with a copy of `src`'s first `staging.size()` bytes to
/// `staging` (MAP_READ) after it, waits for the GPU, and returns the time from
/// submission to the end of the wait and the bytes.
pub fn submit_and_read(
    device: &wgpu::Device,
    queue: &wgpu::Queue,
    mut enc: wgpu::CommandEncoder,
    src: &wgpu::Buffer,
    staging: &wgpu::Buffer,
) -> anyhow::Result<(Duration, Vec<u8>)> {
    enc.copy_buffer_to_buffer(src, 0, staging, 0, staging.size());
    let t = Instant::now();
    queue.submit([enc.finish()]);
    let (tx, rx) = std::sync::mpsc::channel();
    staging.slice(..).map_async(wgpu::MapMode::Read, move |r| {
        let _ = tx.send(r);
    });
    device
        .poll(wgpu::PollType::wait_indefinitely())
        .map_err(|e| anyhow::anyhow!("GPU wait failed: {e}"))?;
    let took = t.elapsed();
    rx.recv()??;
    let bytes = staging
        .get_mapped_range(..)
        .map_err(|e| anyhow::anyhow!("mapping failed: {e}"))?
        .to_vec();
    staging.unmap();
    Ok((took, bytes))
}
