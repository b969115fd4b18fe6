//! `GpuBackend`: the buffers of [`Buf`] as wgpu storage buffers, the image store
//! resident on the GPU as packed bytes, and `run`, which records every op of an
//! epoch (all steps) into one command encoder and one compute pass. Each op reads
//! its parameters from its own 256-byte slot of one uniform buffer (dynamic
//! offset), written once per `run`; bind groups are created once and cached.

use super::context::{GpuContext, Kernel, UNIFORM_BYTES};
use crate::backend::Backend;
use crate::plan::{Buf, Op, Sizes};
use anyhow::{anyhow, ensure, Result};
use std::collections::HashMap;
use std::ops::Range;

/// A resource a kernel binds: one of the f32 buffers, the image store or the index.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Res {
    F(Buf),
    Data,
    Idx,
}

pub struct GpuBackend {
    ctx: GpuContext,
    sizes: Sizes,
    bufs: Vec<wgpu::Buffer>,
    data: wgpu::Buffer,
    idx: wgpu::Buffer,
    uniforms: wgpu::Buffer,
    uniform_bg: wgpu::BindGroup,
    slots: usize,
    stride: usize,
    bind_groups: HashMap<(Kernel, Vec<Res>), wgpu::BindGroup>,
}

/// Split a 1-D workgroup count over x and y (each ≤ 65535); kernels that can get
/// more than 65535 groups fold y back in (`adam.wgsl`).
fn groups_1d(n: usize) -> (u32, u32) {
    let x = n.clamp(1, 65535);
    (x as u32, n.div_ceil(x).max(1) as u32)
}

/// The kernel, bound resources (in `Kernel::bindings` order), workgroup counts and
/// parameter bytes of an op.
fn lower(op: &Op) -> (Kernel, Vec<Res>, (u32, u32), Vec<u8>) {
    use bytemuck::bytes_of;
    use Buf::*;
    let f = Res::F;
    match op {
        Op::Gather(p) => (
            Kernel::Gather,
            vec![Res::Data, Res::Idx, f(X)],
            groups_1d((p.rows * p.d).div_ceil(256) as usize),
            bytes_of(p).to_vec(),
        ),
        Op::Matmul { a, b, e, c, p } => (
            Kernel::Matmul,
            vec![f(*a), f(*b), f(*e), f(*c)],
            (p.n.div_ceil(32).max(1), p.m.div_ceil(32).max(1)),
            bytes_of(p).to_vec(),
        ),
        Op::BiasGrad { dy, p } => (
            Kernel::BiasGrad,
            vec![f(*dy), f(Grads)],
            (p.n.div_ceil(64).max(1), 1),
            bytes_of(p).to_vec(),
        ),
        Op::ReparamForward(p) => (
            Kernel::ReparamForward,
            vec![f(Head), f(Z), f(Eps), f(Kl)],
            (p.images.div_ceil(64).max(1), 1),
            bytes_of(p).to_vec(),
        ),
        Op::ReparamBackward(p) => (
            Kernel::ReparamBackward,
            vec![f(Dz), f(Eps), f(Head), f(Dhead)],
            (p.images.div_ceil(64).max(1), 1),
            bytes_of(p).to_vec(),
        ),
        Op::Bce(p) => (
            Kernel::Bce,
            vec![f(X), f(Logits), f(Bce)],
            (p.rows.max(1), 1),
            bytes_of(p).to_vec(),
        ),
        Op::Loss(p) => (
            Kernel::Loss,
            vec![f(Bce), f(Kl), f(SampleLoss), f(BatchLoss)],
            (1, 1),
            bytes_of(p).to_vec(),
        ),
        Op::Adam(p) => (
            Kernel::Adam,
            vec![f(Params), f(Grads), f(AdamM), f(AdamV)],
            groups_1d((p.n as usize).div_ceil(256)),
            bytes_of(p).to_vec(),
        ),
    }
}

impl GpuBackend {
    pub fn new(adapter: wgpu::Adapter, store: &[u8], idx_len: usize, sizes: Sizes) -> Result<Self> {
        let words = crate::cpu::gather::pack_bytes(store);
        let largest = Buf::ALL
            .iter()
            .map(|b| b.len(&sizes) as u64 * 4)
            .chain([words.len() as u64 * 4, idx_len as u64 * 4])
            .max()
            .unwrap_or(4);
        let ctx = GpuContext::new(adapter, largest)?;
        let dev = &ctx.device;
        let storage = wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST | wgpu::BufferUsages::COPY_SRC;
        let bufs = Buf::ALL
            .iter()
            .map(|b| {
                dev.create_buffer(&wgpu::BufferDescriptor {
                    label: Some(&format!("{b:?}")),
                    size: (b.len(&sizes).max(1) * 4) as u64,
                    usage: storage,
                    mapped_at_creation: false,
                })
            })
            .collect();
        let data = dev.create_buffer(&wgpu::BufferDescriptor {
            label: Some("image store (packed bytes)"),
            size: (words.len().max(1) * 4) as u64,
            usage: storage,
            mapped_at_creation: false,
        });
        if !words.is_empty() {
            ctx.queue.write_buffer(&data, 0, bytemuck::cast_slice(&words));
        }
        let idx = dev.create_buffer(&wgpu::BufferDescriptor {
            label: Some("index"),
            size: (idx_len.max(1) * 4) as u64,
            usage: storage,
            mapped_at_creation: false,
        });
        let stride = (ctx.device.limits().min_uniform_buffer_offset_alignment as usize).max(UNIFORM_BYTES as usize);
        let (uniforms, uniform_bg) = Self::make_uniforms(&ctx, 1, stride);
        let me = GpuBackend {
            ctx,
            sizes,
            bufs,
            data,
            idx,
            uniforms,
            uniform_bg,
            slots: 1,
            stride,
            bind_groups: HashMap::new(),
        };
        me.ctx.check("buffer creation")?;
        Ok(me)
    }

    pub fn context(&self) -> &GpuContext {
        &self.ctx
    }

    fn make_uniforms(ctx: &GpuContext, slots: usize, stride: usize) -> (wgpu::Buffer, wgpu::BindGroup) {
        let buf = ctx.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("op params"),
            size: (slots * stride) as u64,
            usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let bg = ctx.device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some("op params"),
            layout: &ctx.uniform_layout,
            entries: &[wgpu::BindGroupEntry {
                binding: 0,
                resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                    buffer: &buf,
                    offset: 0,
                    size: wgpu::BufferSize::new(UNIFORM_BYTES),
                }),
            }],
        });
        (buf, bg)
    }

    fn res(&self, r: Res) -> &wgpu::Buffer {
        match r {
            Res::F(b) => &self.bufs[b as usize],
            Res::Data => &self.data,
            Res::Idx => &self.idx,
        }
    }

    fn ensure_bind_group(&mut self, k: Kernel, res: &[Res]) {
        let key = (k, res.to_vec());
        if self.bind_groups.contains_key(&key) {
            return;
        }
        let entries: Vec<wgpu::BindGroupEntry> = k
            .bindings()
            .iter()
            .zip(res)
            .map(|(&(binding, _), &r)| wgpu::BindGroupEntry {
                binding,
                resource: self.res(r).as_entire_binding(),
            })
            .collect();
        let bg = self.ctx.device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some(k.entry()),
            layout: self.ctx.layout(k),
            entries: &entries,
        });
        self.bind_groups.insert(key, bg);
    }
}

impl Backend for GpuBackend {
    fn describe(&self) -> String {
        format!("gpu: {} ({:?})", self.ctx.info.name, self.ctx.info.backend)
    }
    fn kind(&self) -> &'static str {
        "gpu"
    }
    fn sizes(&self) -> &Sizes {
        &self.sizes
    }

    fn write(&mut self, buf: Buf, offset: usize, data: &[f32]) -> Result<()> {
        ensure!(offset + data.len() <= buf.len(&self.sizes), "write past the end of {buf:?}");
        if !data.is_empty() {
            self.ctx
                .queue
                .write_buffer(&self.bufs[buf as usize], (offset * 4) as u64, bytemuck::cast_slice(data));
        }
        Ok(())
    }

    fn write_idx(&mut self, offset: usize, idx: &[u32]) -> Result<()> {
        ensure!((offset + idx.len()) as u64 * 4 <= self.idx.size(), "write past the end of the index buffer");
        if !idx.is_empty() {
            self.ctx.queue.write_buffer(&self.idx, (offset * 4) as u64, bytemuck::cast_slice(idx));
        }
        Ok(())
    }

    fn run(&mut self, ops: &[Op]) -> Result<()> {
        if ops.is_empty() {
            return Ok(());
        }
        if ops.len() > self.slots {
            let slots = ops.len().next_power_of_two();
            let (u, bg) = Self::make_uniforms(&self.ctx, slots, self.stride);
            self.uniforms = u;
            self.uniform_bg = bg;
            self.slots = slots;
        }
        let lowered: Vec<_> = ops.iter().map(lower).collect();
        let mut bytes = vec![0u8; ops.len() * self.stride];
        for (i, (k, res, _, pbytes)) in lowered.iter().enumerate() {
            bytes[i * self.stride..i * self.stride + pbytes.len()].copy_from_slice(pbytes);
            self.ensure_bind_group(*k, res);
        }
        self.ctx.queue.write_buffer(&self.uniforms, 0, &bytes);
        let mut enc = self
            .ctx
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("run") });
        {
            let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor {
                label: Some("ops"),
                timestamp_writes: None,
            });
            let mut current: Option<Kernel> = None;
            for (i, (k, res, (gx, gy), _)) in lowered.iter().enumerate() {
                if current != Some(*k) {
                    pass.set_pipeline(self.ctx.pipeline(*k));
                    current = Some(*k);
                }
                let bg = &self.bind_groups[&(*k, res.clone())];
                pass.set_bind_group(0, bg, &[]);
                pass.set_bind_group(1, &self.uniform_bg, &[(i * self.stride) as u32]);
                pass.dispatch_workgroups(*gx, *gy, 1);
            }
        }
        self.ctx.queue.submit([enc.finish()]);
        self.ctx.check("kernel submission")
    }

    fn read(&mut self, buf: Buf, range: Range<usize>) -> Result<Vec<f32>> {
        ensure!(range.end <= buf.len(&self.sizes), "read past the end of {buf:?}");
        if range.is_empty() {
            return Ok(Vec::new());
        }
        let size = (range.len() * 4) as u64;
        let staging = self.ctx.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("readback"),
            size,
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let mut enc = self
            .ctx
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("readback") });
        enc.copy_buffer_to_buffer(&self.bufs[buf as usize], (range.start * 4) as u64, &staging, 0, size);
        self.ctx.queue.submit([enc.finish()]);
        let (tx, rx) = std::sync::mpsc::channel();
        staging.map_async(wgpu::MapMode::Read, .., move |r| {
            let _ = tx.send(r);
        });
        self.ctx.wait("readback")?;
        rx.recv()
            .map_err(|_| anyhow!("GPU readback was never answered"))?
            .map_err(|e| anyhow!("GPU readback failed: {e}"))?;
        let view = staging
            .get_mapped_range(..)
            .map_err(|e| anyhow!("GPU readback mapping failed: {e}"))?;
        let out = bytemuck::cast_slice::<u8, f32>(&view).to_vec();
        drop(view);
        staging.unmap();
        Ok(out)
    }
}
