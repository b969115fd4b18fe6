//! `GpuBackend`: the buffers of [`Buf`] as wgpu storage buffers, the image store
//! resident on the GPU as packed bytes, and `run`, which records every op of an
//! epoch (all steps) into one command encoder and one compute pass. Each op reads
//! its parameters from its own 256-byte slot of one uniform buffer (dynamic
//! offset), written once per `run`; bind groups are created once and cached.
//! `run_timed` (for `vae-ood bench`) records the same pass with timestamps written
//! between the dispatches of chosen ops, into a query set kept across calls.
//! Which dispatches an op list becomes is the lowering's (`lower.rs`).

use super::context::{GpuContext, GpuOptions, Kernel, PersistentGroups, UNIFORM_BYTES};
use super::lower::{
    last_block_len, lower_all, partial_len, rowloss_len, split_target, Fusions, Res, SPLIT_TARGET,
};
use super::persistent::{self, ChainPipeline, Phase};
use crate::backend::{Backend, Pending, PendingRead};
use crate::plan::{Buf, Op, Sizes};
use anyhow::{anyhow, ensure, Result};
use std::collections::{BTreeSet, HashMap};
use std::ops::Range;

pub struct GpuBackend {
    ctx: GpuContext,
    sizes: Sizes,
    bufs: Vec<wgpu::Buffer>,
    data: wgpu::Buffer,
    idx: wgpu::Buffer,
    uniforms: wgpu::Buffer,
    uniform_bg: wgpu::BindGroup,
    partial: wgpu::Buffer,
    rowloss: wgpu::Buffer,
    counts: wgpu::Buffer,
    head_parts: wgpu::Buffer,
    slots: usize,
    stride: usize,
    bind_group_index: HashMap<(Kernel, Vec<Res>), usize>,
    bind_groups: Vec<wgpu::BindGroup>,
    /// timestamp query set and its readback buffers, created on first `run_timed`
    timing: Option<Timing>,
    /// ops in a run's first submission (0: the whole run in one); see [`Self::record`]
    submit_chunk: usize,
    /// whole images in the store: the bound on every image number in `idx`
    images: usize,
    /// entries of `idx`
    idx_len: usize,
    /// the GPU fusions ([`Fusions`]): ops run two to a dispatch (a layer's input
    /// and weight gradients, [`pairable`]; a step's Adam with the next step's
    /// gather; a training step's BCE with its loss), and split-K reduces folded
    /// into the kernel that reads the product ([`absorbs`])
    fusions: Fusions,
    /// the persistent step's state, where it is on (`VAE_OOD_GPU_PERSISTENT`)
    persist: Option<Persist>,
}

/// The persistent step (`persistent.rs`): its pipelines, bind groups, barrier
/// counters and status word.
struct Persist {
    /// workgroups per persistent dispatch, or `auto` (each pipeline's own:
    /// `ChainPipeline::groups`)
    groups: PersistentGroups,
    /// the most phases (dispatches) per persistent dispatch
    max_phases: usize,
    /// whether each kernel can be a phase (its module transforms)
    phase_ok: HashMap<Kernel, bool>,
    /// by chain (its phases and what each binds): its pipeline, or None where it
    /// could not be built (its dispatches then run as they are)
    pipelines: HashMap<ChainKey, Option<ChainPipeline>>,
    bind_groups: HashMap<ChainKey, wgpu::BindGroup>,
    /// group 1 of a chain of n phases (n bindings of the uniform buffer), by n
    uniform_bgs: HashMap<usize, wgpu::BindGroup>,
    grid_layout: wgpu::BindGroupLayout,
    /// the barrier counters: one slot of `align` bytes per persistent dispatch
    /// of a run, zeroed before it
    grid: wgpu::Buffer,
    grid_bg: wgpu::BindGroup,
    align: usize,
    /// [0]: 1 where a barrier's wait gave up; copied into `status_staging` with a
    /// read, checked when it is collected
    status: wgpu::Buffer,
    status_staging: wgpu::Buffer,
    /// the grid barrier's mode (`grid_mode`): zeros, a run (the probe has its own)
    mode: wgpu::Buffer,
    status_mapped: Option<std::sync::mpsc::Receiver<Result<(), wgpu::BufferAsyncError>>>,
    /// persistent dispatches were recorded since the status was last copied
    unchecked: bool,
    /// persistent dispatches in the last run recorded
    last_run: usize,
}

impl Persist {
    fn new(ctx: &GpuContext, groups: PersistentGroups) -> Persist {
        let dev = &ctx.device;
        let grid_layout = persistent::grid_layout(dev);
        let align = dev.limits().min_storage_buffer_offset_alignment.max(16) as usize;
        let status = dev.create_buffer(&wgpu::BufferDescriptor {
            label: Some("persistent step status"),
            size: 16,
            usage: wgpu::BufferUsages::STORAGE
                | wgpu::BufferUsages::COPY_SRC
                | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let status_staging = dev.create_buffer(&wgpu::BufferDescriptor {
            label: Some("persistent step status readback"),
            size: 16,
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let mode = dev.create_buffer(&wgpu::BufferDescriptor {
            label: Some("grid barrier mode: a run"),
            size: 16,
            usage: wgpu::BufferUsages::UNIFORM,
            // (zeroed, as a new buffer is)
            mapped_at_creation: false,
        });
        let (grid, grid_bg) = Self::make_grid(dev, &grid_layout, &status, &mode, align, 1);
        // each phase takes a dynamic uniform offset
        let most = dev.limits().max_dynamic_uniform_buffers_per_pipeline_layout as usize;
        Persist {
            groups,
            max_phases: (ctx.options.persistent_phases as usize).min(most),
            phase_ok: HashMap::new(),
            pipelines: HashMap::new(),
            bind_groups: HashMap::new(),
            uniform_bgs: HashMap::new(),
            grid_layout,
            grid,
            grid_bg,
            align,
            status,
            status_staging,
            mode,
            status_mapped: None,
            unchecked: false,
            last_run: 0,
        }
    }

    fn make_grid(
        dev: &wgpu::Device,
        layout: &wgpu::BindGroupLayout,
        status: &wgpu::Buffer,
        mode: &wgpu::Buffer,
        align: usize,
        slots: usize,
    ) -> (wgpu::Buffer, wgpu::BindGroup) {
        let grid = dev.create_buffer(&wgpu::BufferDescriptor {
            label: Some("grid barrier counters"),
            size: (slots.max(1) * align) as u64,
            usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let bg = persistent::grid_bind_group(dev, layout, &grid, status, mode);
        (grid, bg)
    }
}

/// A persistent dispatch's phases and the resources each binds (which buffers
/// share a variable: `persistent::resources`).
type ChainKey = (Vec<Phase>, Vec<Vec<Res>>);

/// Whether a dispatch of kernel `k` ends a training step (its Adam): a
/// persistent dispatch holds whole steps.
fn ends_step(k: Kernel) -> bool {
    matches!(k, Kernel::Adam | Kernel::AdamGather)
}

/// A query set of `len` timestamps, the buffer it resolves into and a mappable copy.
struct Timing {
    len: u32,
    queries: wgpu::QuerySet,
    resolved: wgpu::Buffer,
    staging: wgpu::Buffer,
}

/// Ops in the first submission of a run unless `VAE_OOD_GPU_CHUNK` says otherwise
/// (0: one submission per run): about 8 training steps.
pub const SUBMIT_CHUNK_OPS: usize = 128;

fn submit_chunk_from_env() -> usize {
    crate::knobs::number(crate::knobs::GPU_CHUNK, 0..=1 << 24)
        .map_or(SUBMIT_CHUNK_OPS, |v| v as usize)
}

impl GpuBackend {
    /// Ops in a run's first submission; later ones double up to 8× that; 0 puts a
    /// whole run in one submission (the default is [`SUBMIT_CHUNK_OPS`], or
    /// `VAE_OOD_GPU_CHUNK`). The results do not depend on it (tested).
    pub fn set_submit_chunk(&mut self, ops: usize) {
        self.submit_chunk = ops;
    }

    /// Whether the bit-exact GPU fusions are on: a layer's input and weight
    /// gradients as one `matmul_pair` dispatch, a step's Adam and the next step's
    /// gather as one `adam_gather`, a training step's loss written by the BCE
    /// kernel, split-K reduces folded into the kernel that reads the product,
    /// three weight gradients as one `matmul_triple` where the device has it (with
    /// the step's Adam in it, `matmul_triple_adam`, where the device has that: on,
    /// this is every fusion, one more than [`Fusions::DEFAULT`]), and a gather in
    /// the loads of the product that reads it. The results do not depend on
    /// it, bit for bit (tested). The latent fusion and the BCE epilogue, which sum
    /// in another order, are left as they are ([`Self::set_fusions`]).
    pub fn set_fused(&mut self, on: bool) {
        self.fusions = Fusions {
            pairs: on,
            reduces: on,
            triple: on && self.ctx.has(Kernel::MatmulTriple),
            adam: on && self.ctx.has(Kernel::MatmulTripleAdam),
            latent_adam: on && self.ctx.has(Kernel::LatentBackwardAdam),
            gather: on,
            ..self.fusions
        };
    }

    /// Each GPU fusion on or off.
    /// (The latent fusion and the triple stay off on a device without their
    /// kernels, see `GpuContext::has`.)
    pub fn set_fusions(&mut self, f: Fusions) {
        let latent = [Kernel::LatentForward, Kernel::LatentBackward];
        self.fusions = Fusions {
            latent: f.latent && latent.iter().all(|&k| self.ctx.has(k)),
            triple: f.triple && self.ctx.has(Kernel::MatmulTriple),
            adam: f.adam && self.ctx.has(Kernel::MatmulTripleAdam),
            latent_adam: f.latent_adam && self.ctx.has(Kernel::LatentBackwardAdam),
            // (both kernels: fc1 reads the image store at a run's first step)
            latent_fc1: f.latent_fc1
                && [Kernel::MatmulLatent, Kernel::MatmulGatherLatent]
                    .iter()
                    .all(|&k| self.ctx.has(k)),
            latent_pair: f.latent_pair && self.ctx.has(Kernel::MatmulPairLatent),
            tail_fc1: f.tail_fc1 && self.ctx.has(Kernel::MatmulGatherAdam),
            bce: f.bce
                && [Kernel::MatmulBce, Kernel::MatmulPairLoss]
                    .iter()
                    .all(|&k| self.ctx.has(k)),
            ..f
        };
    }

    /// How many dispatches `ops` take (pairs and split-K reduces counted).
    pub fn dispatches(&self, ops: &[Op]) -> usize {
        lower_all(ops, self.fusions).0.len()
    }

    /// The workgroups of the persistent pipelines built so far (each G once, in
    /// order; with `VAE_OOD_GPU_PERSISTENT=auto`, what each one's probe found).
    pub fn persistent_groups(&self) -> Vec<u32> {
        let Some(p) = &self.persist else {
            return Vec::new();
        };
        let gs: BTreeSet<u32> = p.pipelines.values().flatten().map(|cp| cp.groups).collect();
        gs.into_iter().collect()
    }

    /// What the probes of `VAE_OOD_GPU_PERSISTENT=auto` did, one per persistent
    /// pipeline built so far (none with a fixed G).
    pub fn persistent_probes(&self) -> Vec<persistent::Probe> {
        let Some(p) = &self.persist else {
            return Vec::new();
        };
        p.pipelines
            .values()
            .flatten()
            .filter_map(|cp| cp.probe.clone())
            .collect()
    }

    /// What making the persistent step's cross-phase accesses visible changed in
    /// each of its pipelines built so far (on the tensor cores; None for a pipeline
    /// built from the WGSL: the FMA walk, or `VAE_OOD_GPU_PERSISTENT_PLAIN=1`).
    pub fn persistent_visibility(&self) -> Vec<Option<super::persistent::spirv::Visibility>> {
        let Some(p) = self.persist.as_ref() else {
            return Vec::new();
        };
        p.pipelines
            .values()
            .flatten()
            .map(|cp| cp.visibility)
            .collect()
    }

    /// How many persistent dispatches the last run recorded (0 where the
    /// persistent step is off: `VAE_OOD_GPU_PERSISTENT`).
    pub fn persistent_dispatches(&self) -> usize {
        self.persist.as_ref().map_or(0, |p| p.last_run)
    }

    /// The kernel of each dispatch `ops` take, in order.
    pub fn kernels(&self, ops: &[Op]) -> Vec<Kernel> {
        lower_all(ops, self.fusions)
            .0
            .iter()
            .map(|d| d.1 .0)
            .collect()
    }

    /// The backend on `adapter`, options from the environment (`VAE_OOD_NO_SUBGROUPS`).
    pub fn new(adapter: wgpu::Adapter, store: &[u8], idx_len: usize, sizes: Sizes) -> Result<Self> {
        Self::with_options(adapter, store, idx_len, sizes, GpuOptions::from_env())
    }

    /// [`GpuBackend::new`] with explicit options (tests run both reduction variants).
    pub fn with_options(
        adapter: wgpu::Adapter,
        store: &[u8],
        idx_len: usize,
        sizes: Sizes,
        opts: GpuOptions,
    ) -> Result<Self> {
        let words = crate::cpu::gather::pack_bytes(store);
        let largest = Buf::ALL
            .iter()
            .map(|b| b.len(&sizes) as u64 * 4)
            .chain([words.len() as u64 * 4, idx_len as u64 * 4])
            .max()
            .unwrap_or(4);
        let ctx = GpuContext::with_options(adapter, largest, opts)?;
        let dev = &ctx.device;
        let storage = wgpu::BufferUsages::STORAGE
            | wgpu::BufferUsages::COPY_DST
            | wgpu::BufferUsages::COPY_SRC;
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
            ctx.queue
                .write_buffer(&data, 0, bytemuck::cast_slice(&words));
        }
        let idx = dev.create_buffer(&wgpu::BufferDescriptor {
            label: Some("index"),
            size: (idx_len.max(1) * 4) as u64,
            usage: storage,
            mapped_at_creation: false,
        });
        let stride = (ctx.device.limits().min_uniform_buffer_offset_alignment as usize)
            .max(UNIFORM_BYTES as usize);
        let (uniforms, uniform_bg) = Self::make_uniforms(&ctx, 1, stride);
        let partial = Self::make_scratch(&ctx, "split-K partial sums", 1);
        let rowloss = Self::make_scratch(&ctx, "row shares of the BCE", 1);
        let counts = Self::make_scratch(&ctx, "last-block counters", 1);
        let head_parts = Self::make_scratch(&ctx, "shares of the head", 1);
        let mut me = GpuBackend {
            ctx,
            sizes,
            bufs,
            data,
            idx,
            uniforms,
            uniform_bg,
            partial,
            rowloss,
            counts,
            head_parts,
            slots: 1,
            stride,
            bind_group_index: HashMap::new(),
            bind_groups: Vec::new(),
            timing: None,
            submit_chunk: submit_chunk_from_env(),
            images: store.len() / sizes.dims.d.max(1),
            idx_len,
            fusions: Fusions::NONE,
            persist: None,
        };
        me.persist = me.ctx.features.persistent.map(|g| Persist::new(&me.ctx, g));
        me.set_fusions(Fusions::from_env());
        me.ctx.check("buffer creation")?;
        Ok(me)
    }

    pub fn context(&self) -> &GpuContext {
        &self.ctx
    }

    fn make_uniforms(
        ctx: &GpuContext,
        slots: usize,
        stride: usize,
    ) -> (wgpu::Buffer, wgpu::BindGroup) {
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

    /// A GPU-only f32 buffer of `len` elements (at least one).
    fn make_scratch(ctx: &GpuContext, label: &str, len: usize) -> wgpu::Buffer {
        ctx.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some(label),
            size: (len.max(1) * 4) as u64,
            usage: wgpu::BufferUsages::STORAGE,
            mapped_at_creation: false,
        })
    }

    fn res(&self, r: Res) -> &wgpu::Buffer {
        match r {
            Res::F(b) => &self.bufs[b as usize],
            Res::Data => &self.data,
            Res::Idx => &self.idx,
            Res::Partial => &self.partial,
            Res::RowLoss => &self.rowloss,
            Res::Counts => &self.counts,
            Res::HeadParts => &self.head_parts,
        }
    }

    /// The cached bind group for (kernel, resources), created on first use.
    fn bind_group(&mut self, k: Kernel, res: &[Res]) -> usize {
        let key = (k, res.to_vec());
        if let Some(&i) = self.bind_group_index.get(&key) {
            return i;
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
        let bg = self
            .ctx
            .device
            .create_bind_group(&wgpu::BindGroupDescriptor {
                label: Some(k.entry()),
                layout: self.ctx.layout(k),
                entries: &entries,
            });
        self.bind_groups.push(bg);
        self.bind_group_index
            .insert(key, self.bind_groups.len() - 1);
        self.bind_groups.len() - 1
    }

    /// The plan's dispatches as recorded: runs of consecutive dispatches [d0, d1)
    /// of one training step (up to its Adam) as one persistent dispatch (with its
    /// phases), where
    /// the persistent step is on (`chains`), the pipeline for those phases builds
    /// and the run is not timed; every other dispatch on its own (phases None).
    /// Creates the chains' pipelines, bind groups and uniform bind groups on first
    /// use. A chain whose pipeline cannot be built is said once on stderr and its
    /// dispatches run as they are.
    #[allow(clippy::type_complexity)]
    fn units(
        &mut self,
        plan: &[(usize, Kernel, usize, (u32, u32, u32))],
        plan_res: &[Vec<Res>],
        chains: bool,
    ) -> Vec<(Range<usize>, Option<ChainKey>)> {
        let one = |d: usize| (d..d + 1, None);
        // (taken out while the chains are made, so that self's buffers can be read;
        // put back below, nothing in between returns)
        let Some(mut p) = self.persist.take_if(|_| chains) else {
            return (0..plan.len()).map(one).collect();
        };
        let mut units = Vec::new();
        let mut d = 0;
        while d < plan.len() {
            // the longest run from d of kernels that can be phases, up to
            // max_phases, cut back to the end of its last whole training step
            // (its Adam): a step's dispatches always in one persistent dispatch
            let (mut e, mut step_end) = (d, None);
            while e < plan.len() && e - d < p.max_phases {
                let k = plan[e].1;
                let ok = *p.phase_ok.entry(k).or_insert_with(|| {
                    let phase = [Phase {
                        kernel: k,
                        groups: (1, 1, 1),
                    }];
                    let f = &self.ctx.features;
                    persistent::chain_module(
                        &phase,
                        &|k| k.parts(f.reduce(), f.walk(), f.partials()),
                        &|k| k.constants(&self.ctx.options),
                        &|_, b| Some(b as usize),
                        &|_| true,
                    )
                    .is_ok()
                });
                if !ok {
                    break;
                }
                e += 1;
                if ends_step(k) {
                    step_end = Some(e);
                }
            }
            // (training steps only: a scoring run has few batches, and each chain
            // of other phases would be one more pipeline to compile)
            let e = match step_end {
                Some(e) if e - d >= 2 => e,
                _ => {
                    units.push(one(d));
                    d += 1;
                    continue;
                }
            };
            let phases: Vec<Phase> = plan[d..e]
                .iter()
                .map(|&(_, kernel, _, groups)| Phase { kernel, groups })
                .collect();
            let key: ChainKey = (phases, plan_res[d..e].to_vec());
            // (the chain's distinct buffers: only where its pipeline or bind group
            // is made, once; every later step of the run only looks the key up)
            let needs_resources = match p.pipelines.get(&key) {
                None => true,
                Some(built) => built.is_some() && !p.bind_groups.contains_key(&key),
            };
            let (distinct, map) = if needs_resources {
                persistent::resources(&key.0, &key.1)
            } else {
                Default::default()
            };
            if !p.pipelines.contains_key(&key) {
                // (@coherent on the FMA walk; made visible in the SPIR-V on the
                // tensor cores, whose memory model forbids the decoration)
                let visible = persistent::needs_coherent(&key.0, &map, distinct.len());
                let built =
                    persistent::build_chain(&self.ctx, &p.grid_layout, &key.0, &map, &|r| {
                        visible[r]
                    });
                if let Err(e) = &built {
                    let names: Vec<String> =
                        key.0.iter().map(|ph| format!("{:?}", ph.kernel)).collect();
                    eprintln!(
                        "vae-ood: the persistent step could not be built for {} ({e:#}); running them as dispatches",
                        names.join(", ")
                    );
                }
                let groups = match p.groups {
                    PersistentGroups::Fixed(g) => g,
                    // (probed below, once its bind groups are made)
                    PersistentGroups::Auto => 0,
                };
                p.pipelines.insert(
                    key.clone(),
                    built.ok().map(|cp| ChainPipeline { groups, ..cp }),
                );
            }
            let Some(cp) = p.pipelines[&key].as_ref() else {
                units.extend((d..e).map(one));
                d = e;
                continue;
            };
            if !p.bind_groups.contains_key(&key) {
                let entries: Vec<wgpu::BindGroupEntry> = cp
                    .bindings
                    .iter()
                    .enumerate()
                    .map(|(binding, &r)| wgpu::BindGroupEntry {
                        binding: binding as u32,
                        resource: self.res(distinct[r]).as_entire_binding(),
                    })
                    .collect();
                let bg = self
                    .ctx
                    .device
                    .create_bind_group(&wgpu::BindGroupDescriptor {
                        label: Some("persistent step"),
                        layout: &cp.storage,
                        entries: &entries,
                    });
                p.bind_groups.insert(key.clone(), bg);
            }
            let uniforms = &self.uniforms;
            let device = &self.ctx.device;
            p.uniform_bgs.entry(key.0.len()).or_insert_with(|| {
                let entries: Vec<wgpu::BindGroupEntry> = (0..key.0.len() as u32)
                    .map(|binding| wgpu::BindGroupEntry {
                        binding,
                        resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                            buffer: uniforms,
                            offset: 0,
                            size: wgpu::BufferSize::new(UNIFORM_BYTES),
                        }),
                    })
                    .collect();
                device.create_bind_group(&wgpu::BindGroupDescriptor {
                    label: Some("persistent step: uniforms"),
                    layout: &cp.uniforms,
                    entries: &entries,
                })
            });
            if cp.groups == 0 {
                // `auto`: as many workgroups as the GPU runs of this pipeline at
                // once, up to its largest phase's
                let most = key
                    .0
                    .iter()
                    .map(|ph| ph.groups.0 * ph.groups.1 * ph.groups.2)
                    .max()
                    .unwrap_or(1)
                    .min(
                        self.ctx
                            .device
                            .limits()
                            .max_compute_workgroups_per_dimension,
                    );
                let probed = persistent::probe(
                    &self.ctx,
                    cp,
                    &p.grid_layout,
                    &p.bind_groups[&key],
                    &p.uniform_bgs[&key.0.len()],
                    key.0.len(),
                    most,
                );
                // (a software adapter — lavapipe — runs workgroups on a thread
                // pool with no promise that two run at once: Mesa 22.3's ran a dry
                // pair at once in one probe and not in the next, and a run of two
                // gave up; one workgroup there, whatever the probe found)
                let software = super::is_software(&self.ctx.info);
                let slot = p.pipelines.get_mut(&key).expect("built above");
                match probed {
                    Ok(probe) => {
                        let cp = slot.as_mut().expect("built");
                        cp.groups = if software { 1 } else { probe.found };
                        cp.probe = Some(probe);
                    }
                    Err(err) => {
                        eprintln!(
                            "vae-ood: the persistent step's probe failed ({err:#}); running its dispatches as they are"
                        );
                        *slot = None;
                        units.extend((d..e).map(one));
                        d = e;
                        continue;
                    }
                }
            }
            units.push((d..e, Some(key)));
            d = e;
        }
        self.persist = Some(p);
        units
    }

    fn make_timing(ctx: &GpuContext, len: u32) -> Timing {
        let bytes = len as u64 * 8;
        Timing {
            len,
            queries: ctx.device.create_query_set(&wgpu::QuerySetDescriptor {
                label: Some("op timestamps"),
                ty: wgpu::QueryType::Timestamp,
                count: len,
            }),
            resolved: ctx.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("op timestamps resolved"),
                size: bytes,
                usage: wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC,
                mapped_at_creation: false,
            }),
            staging: ctx.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("op timestamps readback"),
                size: bytes,
                usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            }),
        }
    }

    /// Record `ops` into one command encoder and one compute pass and submit. With
    /// `timed`, also write timestamps around the ops in `timed` (query 0 before the
    /// first dispatch of `ops[timed.start]`, query j + 1 after the last dispatch of
    /// `ops[timed.start + j]`) and resolve them into `timing`'s staging buffer.
    /// Returns the op of each dispatch recorded, in order.
    fn record(&mut self, ops: &[Op], timed: Option<Range<usize>>) -> Result<Vec<usize>> {
        if ops.is_empty() {
            return Ok(Vec::new());
        }
        // clear errors for bad plans, and what makes trusted shaders sound (see
        // build_pipeline)
        crate::plan::check_ops(ops, &self.sizes, self.idx_len)?;
        let grow_uniforms = ops.len() > self.slots;
        if grow_uniforms {
            let slots = ops.len().next_power_of_two();
            let (u, bg) = Self::make_uniforms(&self.ctx, slots, self.stride);
            self.uniforms = u;
            self.uniform_bg = bg;
            self.slots = slots;
        }
        let need = partial_len(ops);
        let rows_need = if self.fusions.bce {
            rowloss_len(ops)
        } else {
            0
        };
        let (grow, grow_rows) = (
            need as u64 * 4 > self.partial.size(),
            rows_need as u64 * 4 > self.rowloss.size(),
        );
        if grow {
            self.partial = Self::make_scratch(&self.ctx, "split-K partial sums", need);
        }
        if grow_rows {
            self.rowloss = Self::make_scratch(&self.ctx, "row shares of the BCE", rows_need);
        }
        let f = self.fusions;
        let latent = f.latent_fc1 || f.latent_pair;
        let (counts_need, parts_need) = match (f.bce, latent) {
            (false, false) => (0, 0),
            (_, latent) => {
                let (c, p) = last_block_len(ops);
                (c, if latent { p } else { 0 })
            }
        };
        let grow_counts = counts_need as u64 * 4 > self.counts.size();
        if grow_counts {
            // (zeroed, as a new buffer is: every counter starts at 0)
            self.counts = Self::make_scratch(&self.ctx, "last-block counters", counts_need);
        }
        let grow_parts = parts_need as u64 * 4 > self.head_parts.size();
        if grow_parts {
            self.head_parts = Self::make_scratch(&self.ctx, "shares of the head or dz", parts_need);
        }
        if grow || grow_rows || grow_counts || grow_parts {
            // bind groups hold the old scratch buffers: rebuild them all lazily
            self.bind_group_index.clear();
            self.bind_groups.clear();
            if let Some(p) = self.persist.as_mut() {
                p.bind_groups.clear();
            }
        }
        let mut bytes = vec![0u8; ops.len() * self.stride];
        // (uniform slot, kernel, bind group, workgroups) per dispatch
        // (an op run as the second of a pair has no dispatch, nor slot, of its own)
        let (lowered, slots) = lower_all(ops, self.fusions);
        for (i, pbytes) in slots.iter().enumerate() {
            bytes[i * self.stride..i * self.stride + pbytes.len()].copy_from_slice(pbytes);
        }
        let mut plan = Vec::with_capacity(lowered.len());
        let mut plan_res = Vec::with_capacity(lowered.len());
        for (i, (k, res, groups)) in lowered {
            let bg = self.bind_group(k, &res);
            plan.push((i, k, bg, groups));
            plan_res.push(res);
        }
        self.ctx.queue.write_buffer(&self.uniforms, 0, &bytes);
        if grow_uniforms {
            if let Some(p) = self.persist.as_mut() {
                p.uniform_bgs.clear();
            }
        }
        // what each recorded dispatch is: the plan's dispatches [d0, d1) as they
        // are (one each), or as one persistent dispatch (chain slot, its phases)
        let units = self.units(&plan, &plan_res, timed.is_none());
        let chains = units.iter().filter(|u| u.1.is_some()).count();
        if let Some(p) = self.persist.as_mut() {
            p.last_run = chains;
            if chains > 0 {
                if ((p.grid.size() as usize) / p.align) < chains {
                    let (g, bg) = Persist::make_grid(
                        &self.ctx.device,
                        &p.grid_layout,
                        &p.status,
                        &p.mode,
                        p.align,
                        chains.next_power_of_two(),
                    );
                    p.grid = g;
                    p.grid_bg = bg;
                }
                p.unchecked = true;
            }
        }
        // Recording is cheap but turning a pass into Vulkan commands (`finish`) costs
        // the host ~2 µs per dispatch (~15 ms for an epoch on a 2-core machine),
        // during which the GPU would sit idle: submit the run in pieces — a small
        // first one so the GPU starts at once, then doubling ones recorded while it
        // works. Each piece is one compute pass; queue order keeps the semantics.
        let queries = timed.as_ref().map(|t| {
            (
                t.clone(),
                &self.timing.as_ref().expect("run_timed creates it").queries,
            )
        });
        let mut chunk = if self.submit_chunk == 0 {
            ops.len()
        } else {
            self.submit_chunk
        };
        let mut u0 = 0;
        let mut slot = 0;
        while u0 < units.len() {
            // this piece: the units whose first dispatch is of an op in
            // [plan[units[u0].0.start].0, op_end)
            let op_end = (plan[units[u0].0.start].0 + chunk).min(ops.len());
            let u1 = u0
                + units[u0..]
                    .iter()
                    .take_while(|u| plan[u.0.start].0 < op_end)
                    .count();
            if self.submit_chunk > 0 {
                chunk = (chunk * 2).min(self.submit_chunk * 8);
            }
            let mut enc = self
                .ctx
                .device
                .create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("run") });
            if u0 == 0 && chains > 0 {
                let p = self.persist.as_ref().expect("chains need it");
                enc.clear_buffer(&p.grid, 0, Some((chains * p.align) as u64));
            }
            {
                let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor {
                    label: Some("ops"),
                    timestamp_writes: None,
                });
                let mut current: Option<Kernel> = None;
                for (range, chain) in &units[u0..u1] {
                    if let Some(key) = chain {
                        let p = self.persist.as_ref().expect("chains need it");
                        let cp = p.pipelines[key].as_ref().expect("units keep built chains");
                        let offsets: Vec<u32> = plan[range.clone()]
                            .iter()
                            .map(|d| (d.0 * self.stride) as u32)
                            .collect();
                        pass.set_pipeline(&cp.pipeline);
                        current = None;
                        pass.set_bind_group(0, &p.bind_groups[key], &[]);
                        pass.set_bind_group(1, &p.uniform_bgs[&key.0.len()], &offsets);
                        pass.set_bind_group(2, &p.grid_bg, &[(slot * p.align) as u32]);
                        pass.dispatch_workgroups(cp.groups, 1, 1);
                        slot += 1;
                        continue;
                    }
                    let d = range.start;
                    let (i, k, bg, (gx, gy, gz)) = plan[d];
                    if let Some((t, q)) = &queries {
                        if i >= t.start && (d == 0 || plan[d - 1].0 < t.start) {
                            pass.write_timestamp(q, 0);
                        }
                    }
                    if current != Some(k) {
                        pass.set_pipeline(self.ctx.pipeline(k));
                        current = Some(k);
                    }
                    pass.set_bind_group(0, &self.bind_groups[bg], &[]);
                    pass.set_bind_group(1, &self.uniform_bg, &[(i * self.stride) as u32]);
                    pass.dispatch_workgroups(gx, gy, gz);
                    if let Some((t, q)) = &queries {
                        // after an op's last dispatch: its timestamp, and those of the
                        // ops after it without dispatches of their own (they read 0)
                        let next_op = plan.get(d + 1).map_or(ops.len(), |next| next.0);
                        if next_op != i {
                            for j in (i..next_op).filter(|j| t.contains(j)) {
                                pass.write_timestamp(q, (j - t.start + 1) as u32);
                            }
                        }
                    }
                }
            }
            if u1 == units.len() {
                if let Some(t) = &timed {
                    let tm = self.timing.as_ref().expect("run_timed creates it");
                    let n = t.len() as u32 + 1;
                    enc.resolve_query_set(&tm.queries, 0..n, &tm.resolved, 0);
                    enc.copy_buffer_to_buffer(&tm.resolved, 0, &tm.staging, 0, n as u64 * 8);
                }
            }
            self.ctx.queue.submit([enc.finish()]);
            u0 = u1;
        }
        self.ctx.check("kernel submission")?;
        Ok(plan.iter().map(|d| d.0).collect())
    }
}

impl GpuBackend {
    /// Whether a persistent dispatch's barrier gave up waiting (its status copied
    /// with an earlier read whose submission has finished): an error, and the
    /// status cleared.
    fn check_status(&mut self) -> Result<()> {
        let Some(p) = self.persist.as_mut() else {
            return Ok(());
        };
        let Some(rx) = &p.status_mapped else {
            return Ok(());
        };
        let mapped = match rx.try_recv() {
            Ok(r) => r,
            // (its submission not finished yet: checked at a later read)
            Err(std::sync::mpsc::TryRecvError::Empty) => return Ok(()),
            Err(std::sync::mpsc::TryRecvError::Disconnected) => Err(wgpu::BufferAsyncError),
        };
        p.status_mapped = None;
        mapped.map_err(|e| anyhow!("GPU status readback failed: {e}"))?;
        let view = p
            .status_staging
            .get_mapped_range(..)
            .map_err(|e| anyhow!("GPU status mapping failed: {e}"))?;
        let gave_up = bytemuck::cast_slice::<u8, u32>(&view)[0] != 0;
        drop(view);
        p.status_staging.unmap();
        if gave_up {
            self.ctx.queue.write_buffer(&p.status, 0, &[0u8; 16]);
            let asked = p.groups;
            let fewer = match asked {
                PersistentGroups::Fixed(_) => "use fewer workgroups".to_string(),
                PersistentGroups::Auto => format!(
                    "its probe found {:?} (other work on the GPU?): set {} to fewer",
                    self.persistent_groups(),
                    crate::knobs::GPU_PERSISTENT
                ),
            };
            anyhow::bail!(
                "{}={}: a grid barrier of the persistent step gave up waiting: the GPU did not run that many workgroups at once, and the run's results are wrong; {fewer}",
                crate::knobs::GPU_PERSISTENT,
                asked
            );
        }
        Ok(())
    }
}

impl Backend for GpuBackend {
    fn describe(&self) -> String {
        // (how the persistent step's later phases see the earlier ones' stores on
        // the tensor cores, where its buffers cannot be @coherent)
        let visibility = match (self.ctx.features.coop, self.ctx.features.visible_spirv) {
            (None, _) => "",
            (Some(_), true) => {
                ", on the tensor cores its loads across phases made visible (SPIR-V)"
            }
            (Some(_), false) => ", on the tensor cores its loads across phases plain",
        };
        let persistent = match &self.persist {
            Some(p) => format!(
                ", persistent step of {}, up to {} dispatches each{visibility}",
                match p.groups {
                    PersistentGroups::Fixed(g) => format!("{g} workgroups"),
                    PersistentGroups::Auto => match self.persistent_groups()[..] {
                        [] => "as many workgroups as run at once (auto: probed when built)"
                            .to_string(),
                        [1] if super::is_software(&self.ctx.info) => {
                            "1 workgroup (auto: one on a software adapter)".to_string()
                        }
                        ref gs => format!(
                            "{} workgroups (auto: probed)",
                            gs.iter()
                                .map(|g| g.to_string())
                                .collect::<Vec<_>>()
                                .join(", ")
                        ),
                    },
                },
                p.max_phases
            ),
            None => match &self.ctx.features.persistent_refused {
                Some(why) => format!(", persistent step off: {why}"),
                None => String::new(),
            },
        };
        format!(
            "gpu: {} ({:?}, {}{}{}{}{}{}{}{}{}{}{}{})",
            self.ctx.info.name,
            self.ctx.info.backend,
            self.ctx.features.subgroups_why,
            match self.ctx.features.coop {
                Some(_) => format!(", matmul on {}", self.ctx.features.coop_why),
                None => String::new(),
            },
            self.ctx.options.checks.note(),
            if self.ctx.options.prefetch {
                ""
            } else {
                ", no prefetching matmul"
            },
            if self.ctx.options.ones_column == Some(true) {
                ", bias gradients as a ones column"
            } else {
                ""
            },
            if self.ctx.options.double_tiles && self.ctx.features.coop.is_none() {
                ", double-buffered matmul tiles"
            } else {
                ""
            },
            if self.ctx.options.early_reads {
                ", early reads"
            } else {
                ""
            },
            if self.ctx.features.coherent {
                ", coherent partial sums"
            } else {
                ""
            },
            match split_target() {
                SPLIT_TARGET => String::new(),
                t => format!(", split-K target {t} workgroups"),
            },
            match self.ctx.options.latent_threads {
                Some(super::context::LATENT_THREADS_MAX) | None => String::new(),
                Some(t) => format!(", latent kernels of {t} threads"),
            },
            self.fusions.note(),
            if self.submit_chunk == 0 {
                ", one submission per run"
            } else {
                ""
            }
        ) + &persistent
    }
    fn kind(&self) -> &'static str {
        "gpu"
    }
    fn sizes(&self) -> &Sizes {
        &self.sizes
    }

    fn write(&mut self, buf: Buf, offset: usize, data: &[f32]) -> Result<()> {
        ensure!(
            offset + data.len() <= buf.len(&self.sizes),
            "write past the end of {buf:?}"
        );
        if !data.is_empty() {
            self.ctx.queue.write_buffer(
                &self.bufs[buf as usize],
                (offset * 4) as u64,
                bytemuck::cast_slice(data),
            );
        }
        Ok(())
    }

    fn write_idx(&mut self, offset: usize, idx: &[u32]) -> Result<()> {
        ensure!(
            offset + idx.len() <= self.idx_len,
            "write past the end of the index buffer"
        );
        // the gather reads image idx[r] unchecked on the GPU (see build_pipeline)
        crate::plan::check_idx(idx, self.images)?;
        if !idx.is_empty() {
            self.ctx
                .queue
                .write_buffer(&self.idx, (offset * 4) as u64, bytemuck::cast_slice(idx));
        }
        Ok(())
    }

    fn run(&mut self, ops: &[Op]) -> Result<()> {
        self.record(ops, None).map(drop)
    }

    fn has_timestamps(&self) -> bool {
        self.ctx.features.timestamps
    }

    fn dispatches(&self, ops: &[Op]) -> Option<usize> {
        Some(GpuBackend::dispatches(self, ops))
    }

    fn run_timed(&mut self, ops: &[Op], timed: Range<usize>) -> Result<Option<Vec<f64>>> {
        if !self.ctx.features.timestamps {
            return Ok(None);
        }
        ensure!(
            !timed.is_empty() && timed.end <= ops.len(),
            "timed ops {timed:?} outside the {} ops run",
            ops.len()
        );
        let n = timed.len() as u32 + 1;
        ensure!(
            n <= wgpu::QUERY_SET_MAX_QUERIES,
            "{} timed ops: a query set holds {} timestamps",
            timed.len(),
            wgpu::QUERY_SET_MAX_QUERIES
        );
        if self.timing.as_ref().is_none_or(|t| t.len < n) {
            self.timing = Some(Self::make_timing(&self.ctx, n));
        }
        let dispatched = self.record(ops, Some(timed.clone()))?;
        let t = self.timing.as_ref().expect("created above");
        let ticks: Vec<u64> = self
            .ctx
            .read_staging(&t.staging, n as u64 * 8, "timestamp")?;
        let period = self.ctx.queue.get_timestamp_period() as f64;
        let mut ns: Vec<f64> = ticks
            .windows(2)
            .map(|w| w[1].saturating_sub(w[0]) as f64 * period)
            .collect();
        // An op without a dispatch of its own (the second of a gradient pair, the
        // ops of a latent kernel after its first) had its timestamp written right
        // after an op that has one: exactly 0, the gap (if the adapter's clock moved
        // at all) charged to the last op before it with a dispatch.
        let mut own = vec![false; ops.len()];
        for i in dispatched {
            own[i] = true;
        }
        let mut owner = 0;
        for j in 1..ns.len() {
            if own[timed.start + j] {
                owner = j;
            } else {
                ns[owner] += ns[j];
                ns[j] = 0.0;
            }
        }
        Ok(Some(ns))
    }

    fn read(&mut self, buf: Buf, range: Range<usize>) -> Result<Vec<f32>> {
        // (the copy is the last submission: collecting it waits for all work)
        let r = self.read_later(buf, range)?;
        self.collect(r)
    }

    fn read_later(&mut self, buf: Buf, range: Range<usize>) -> Result<PendingRead> {
        ensure!(
            range.end <= buf.len(&self.sizes),
            "read past the end of {buf:?}"
        );
        if range.is_empty() {
            return Ok(PendingRead(Pending::Ready(Vec::new())));
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
            .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                label: Some("readback"),
            });
        enc.copy_buffer_to_buffer(
            &self.bufs[buf as usize],
            (range.start * 4) as u64,
            &staging,
            0,
            size,
        );
        // the persistent step's status with it, where it ran since the last copy
        let status = self
            .persist
            .as_mut()
            .filter(|p| p.unchecked && p.status_mapped.is_none());
        let status = status.inspect(|p| {
            enc.copy_buffer_to_buffer(&p.status, 0, &p.status_staging, 0, 16);
        });
        let index = self.ctx.queue.submit([enc.finish()]);
        if let Some(p) = status {
            p.unchecked = false;
            let (tx, rx) = std::sync::mpsc::channel();
            p.status_staging
                .map_async(wgpu::MapMode::Read, .., move |r| {
                    let _ = tx.send(r);
                });
            p.status_mapped = Some(rx);
        }
        let (tx, mapped) = std::sync::mpsc::channel();
        staging.map_async(wgpu::MapMode::Read, .., move |r| {
            let _ = tx.send(r);
        });
        Ok(PendingRead(Pending::Staged {
            staging,
            index,
            mapped,
        }))
    }

    fn collect(&mut self, read: PendingRead) -> Result<Vec<f32>> {
        let (staging, index, mapped) = match read.0 {
            Pending::Ready(v) => return Ok(v),
            Pending::Staged {
                staging,
                index,
                mapped,
            } => (staging, index, mapped),
        };
        // wait for the copy's submission only: runs submitted after it go on
        self.ctx
            .device
            .poll(wgpu::PollType::Wait {
                submission_index: Some(index),
                timeout: None,
            })
            .map_err(|e| anyhow!("GPU wait failed during readback: {e}"))?;
        self.ctx.check("readback")?;
        self.check_status()?;
        mapped
            .recv()
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
