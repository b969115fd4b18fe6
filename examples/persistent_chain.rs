//! Would a persistent training step beat the dispatch chain, with real products
//! in it? `grid_sync` times a grid barrier against a dispatch boundary around
//! trivial work; this runs a chain of split-K products shaped as the step's, each
//! reading the one before, three ways:
//!
//! - `dispatches`: one dispatch per product, one workgroup per (output tile, K
//!   share), all in one compute pass (wgpu's barrier between them, as in a
//!   training step);
//! - `persistent`: one dispatch of G workgroups that loop over each product's
//!   (tile, share) items, a grid barrier (the flag-polling one of `grid_sync`)
//!   between products. G is at most what the GPU runs at once (the barrier
//!   deadlocks otherwise): 132 (one per SM of an H100 or H200), 264 or 416 (the
//!   fc1-like product's item count, so that no workgroup loops);
//! - `ticketed`: one dispatch of a workgroup per item of every product of every
//!   repetition; each takes a ticket as it starts (its product and item, in chain
//!   order) and waits until every item of the product before has counted itself
//!   done. A workgroup only waits for lower tickets, whose workgroups have started,
//!   so it needs no cap on the workgroups (`last_block`'s fan-out waits, with
//!   products around them): the design that keeps the products' natural
//!   workgroup counts, where the persistent one may lose to its cap.
//!
//! The products alternate between fc1's forward shape (128 × 400, K = 784, 8 K
//! shares: 52 tiles × 8 = 416 items) and fc4's (128 × 784, K = 400, 2 shares:
//! 100 × 2 = 200), `CHAIN` = 8 per repetition (a step's number of dependent
//! phases, give or take one). A product reads the one before summed over its K
//! shares as it loads its A tile (the step's folded reduces), so every load of A
//! is of values other workgroups stored in the previous phase: with plain loads
//! after a grid barrier those may be stale on NVIDIA (`grid_sync`, 2026-11-26), so
//! the persistent and ticketed runs use the partial sums' buffer (and the total's)
//! declared `@coherent` where the adapter offers it (wgpu 30: every Vulkan
//! adapter), and plain as well for the stale count. Each repetition starts from the input rotated by its number of rows
//! (other values each time, or a stale read of the previous repetition's would go
//! unseen), and its last product's partial sums are added to a total, which must
//! come out the same as the dispatch chain's (same code, same order: bit for
//! bit; `mismatches` counts the elements that differ). The chain's total is also
//! checked against a CPU reference where the repetitions are few (lavapipe).
//!
//! The tile code is a plain 32 × 32 walk (2 × 2 outputs per thread, K 32 at a
//! time), not the training kernels' tuned one, and the same in both ways: the
//! difference per product is what the persistent kernel would save (or lose: G
//! workgroups may loop over more items than they can run at once). Not part of
//! the training path; added 2026-11-27 without a GPU, checked on lavapipe
//! (there, the persistent kernel only with one workgroup, which cannot wait on
//! another): on Mesa 26.1's (`tools/coop-lavapipe.sh`'s Debian 13 root) the
//! dispatch chain equals its CPU twin, and the one-workgroup persistent runs and
//! the ticketed runs equal the chain, bit for bit. Mesa 22.3's (Debian 12) cuts
//! long loops short: the one persistent workgroup stops partway through the chain
//! (its item loop, with barriers in it, after a few hundred items, earlier with
//! wgpu's loop bounding on), and 1–4 ticketed workgroups per run leave their wait
//! loop before its condition holds (counted with a debug counter: 0 on 26.1), so
//! there those rows show mismatches. A lavapipe defect, not a stale read. README,
//! "The `@coherent` lever, measured" (run on an H200 on 2026-11-27).
//!
//! With `PERSISTENT_CHAIN_VMM=1`, where the adapter has the tensor cores' cooperative
//! matrices, the device is opened with them (wgpu then enables its Vulkan memory
//! model) and the persistent and ticketed ways run a third time, plain, with a
//! cooperative-matrix variable declared in their entry points: naga then declares
//! the Vulkan memory model for them (checked here by translating them with naga),
//! the model the tensor-core walk's kernels run under and in which `@coherent` is
//! not allowed. Its rows say whether plain loads after naga's barriers (which carry
//! no MakeAvailable/MakeVisible semantics) see the other workgroups' stores there:
//! whether a persistent step could run on the tensor cores.
//!
//! With `PERSISTENT_CHAIN_STRICT=1` any mismatch is an error (exit 1): how
//! `tools/coop-lavapipe.sh` (CI) checks the ways on Mesa 26.1's lavapipe, where
//! there are no caches to go stale. On a GPU the plain rows' mismatches are the
//! finding, not a failure.
//!
//!   cargo run --release --example persistent_chain [reps] [max_groups]
mod common;

use rand::{Rng, SeedableRng};
use vae_ood::gpu;

/// Products per repetition (alternating the two shapes).
const CHAIN: u32 = 8;
/// (m, n, k, K shares) of the two shapes: fc1's forward, then fc4's.
const SHAPES: [[u32; 4]; 2] = [[128, 400, 784, 8], [128, 784, 400, 2]];

const SHADER: &str = r#"/*header*/
struct Shape { m: u32, n: u32, k: u32, splits: u32 }
struct P { a: Shape, b: Shape, reps: u32, groups: u32, chain: u32, _pad: u32 }
// (the product's index in the chain: dispatch mode's per-dispatch uniform)
struct Phase { g: u32 }
@group(0) @binding(0) var<uniform> prm: P;
@group(0) @binding(1) var<storage, read> x0: array<f32>; // (128, 784)
// the two weight matrices: (784, 400) then (400, 784)
@group(0) @binding(2) var<storage, read> w: array<f32>;
// ping-pong partial sums: (2, splits · m · n) of the larger shape
/*acts*/ @group(0) @binding(3) var<storage, read_write> acts: array<f32>;
// (each repetition's last product's partial sums, added up; `@coherent` with the
// partial sums: in the ticketed way the next repetition's add may run on another
// workgroup)
/*acts*/ @group(0) @binding(4) var<storage, read_write> total: array<f32>;
// [0]: arrivals at the grid barrier (persistent) or tickets handed out
// (ticketed); [1]: the last product all have finished (persistent)
@group(0) @binding(5) var<storage, read_write> counter: array<atomic<u32>, 2>;
// (the ticketed way: how many items of each product have stored theirs)
@group(0) @binding(6) var<storage, read_write> done: array<atomic<u32>>; // (reps · chain)
@group(1) @binding(0) var<uniform> phase: Phase;
var<workgroup> ticket_ws: u32;

const T: u32 = 32u;
var<workgroup> a_ws: array<array<f32, 32>, 32>;
var<workgroup> b_ws: array<array<f32, 32>, 32>;

fn shape_of(i: u32) -> Shape {
    if (i % 2u == 0u) {
        return prm.a;
    }
    return prm.b;
}

fn items(s: Shape) -> u32 {
    return ((s.m + T - 1u) / T) * ((s.n + T - 1u) / T) * s.splits;
}

fn half_len() -> u32 {
    return max(prm.a.m * prm.a.n * prm.a.splits, prm.b.m * prm.b.n * prm.b.splits);
}

// A[r, c] of product g (of repetition g / chain, i = g % chain): the input rotated
// by the repetition's number of rows for the first, else the product before it
// summed over its K shares in share order
fn load_a(g: u32, r: u32, c: u32) -> f32 {
    let i = g % prm.chain;
    if (i == 0u) {
        let rep = g / prm.chain;
        return x0[((r + rep) % 128u) * 784u + c];
    }
    let prev = shape_of(i - 1u);
    let base = ((i - 1u) % 2u) * half_len();
    var acc = 0.0;
    for (var q = 0u; q < prev.splits; q++) {
        acc += acts[base + (q * prev.m + r) * prev.n + c];
    }
    return acc;
}

// B[r, c] of product i: the first weight matrix for fc1's shape, the second for fc4's
fn load_b(i: u32, r: u32, c: u32) -> f32 {
    let s = shape_of(i);
    return w[(i % 2u) * 784u * 400u + r * s.n + c];
}

// one (tile, share) item of product g: thread (ty, tx) of 16 × 16 computes rows
// 2ty, 2ty + 1 and columns 2tx, 2tx + 1 of the tile over the share's K range
fn item(g: u32, it: u32, li: u32) {
    let i = g % prm.chain;
    let s = shape_of(i);
    let tiles_n = (s.n + T - 1u) / T;
    let tiles = ((s.m + T - 1u) / T) * tiles_n;
    let share = it / tiles;
    let tile = it % tiles;
    let row0 = (tile / tiles_n) * T;
    let col0 = (tile % tiles_n) * T;
    let per = ((s.k + s.splits - 1u) / s.splits + T - 1u) / T * T;
    let k0 = share * per;
    let k1 = min(s.k, k0 + per);
    let ty = li / 16u;
    let tx = li % 16u;
    var acc = array<f32, 4>(0.0, 0.0, 0.0, 0.0);
    for (var kb = k0; kb < k1; kb += T) {
        // 1,024 of A and of B, four each per thread
        for (var e = li; e < T * T; e += 256u) {
            let rr = e / T;
            let cc = e % T;
            var av = 0.0;
            if (row0 + rr < s.m && kb + cc < k1) {
                av = load_a(g, row0 + rr, kb + cc);
            }
            a_ws[rr][cc] = av;
            var bv = 0.0;
            if (kb + rr < k1 && col0 + cc < s.n) {
                bv = load_b(i, kb + rr, col0 + cc);
            }
            b_ws[rr][cc] = bv;
        }
        workgroupBarrier();
        for (var kk = 0u; kk < T; kk++) {
            let a0 = a_ws[2u * ty][kk];
            let a1 = a_ws[2u * ty + 1u][kk];
            let b0 = b_ws[kk][2u * tx];
            let b1 = b_ws[kk][2u * tx + 1u];
            acc[0] += a0 * b0;
            acc[1] += a0 * b1;
            acc[2] += a1 * b0;
            acc[3] += a1 * b1;
        }
        workgroupBarrier();
    }
    let base = (i % 2u) * half_len();
    for (var q = 0u; q < 4u; q++) {
        let r = row0 + 2u * ty + q / 2u;
        let c = col0 + 2u * tx + q % 2u;
        if (r < s.m && c < s.n) {
            let at = (share * s.m + r) * s.n + c;
            acts[base + at] = acc[q];
            if (i == prm.chain - 1u) {
                total[at] += acc[q];
            }
        }
    }
}

// one product per dispatch, one workgroup per item
@compute @workgroup_size(256)
fn dispatched(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    item(phase.g, wg.x, li);
}

// every product of every repetition in one dispatch: prm.groups workgroups loop
// over each product's items, a grid barrier between products (the flag the last
// to arrive writes; the stores before it made visible at device scope)
@compute @workgroup_size(256)
fn persistent(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    /*vmm*/
    let all = prm.reps * prm.chain;
    for (var g = 0u; g < all; g++) {
        let n = items(shape_of(g % prm.chain));
        for (var it = wg.x; it < n; it += prm.groups) {
            item(g, it, li);
        }
        storageBarrier();
        if (li == 0u) {
            if (atomicAdd(&counter[0], 1u) + 1u == (g + 1u) * prm.groups) {
                atomicStore(&counter[1], g + 1u);
            } else {
                loop {
                    if (atomicLoad(&counter[1]) >= g + 1u) {
                        break;
                    }
                }
            }
        }
        storageBarrier();
    }
}

// every product of every repetition in one dispatch of one workgroup per item
// (and some to spare): each takes a ticket as it starts, which says its product
// and item in chain order, and waits until every item of the product before has
// stored its sums. A workgroup waits only for lower tickets, whose workgroups have
// started, so any number of workgroups may run at once (no cap, unlike the grid
// barrier; examples/last_block.rs's fan-out waits)
@compute @workgroup_size(256)
fn ticketed(@builtin(local_invocation_index) li: u32) {
    /*vmm*/
    if (li == 0u) {
        ticket_ws = atomicAdd(&counter[0], 1u);
    }
    var r = workgroupUniformLoad(&ticket_ws);
    var per_rep = 0u;
    for (var i = 0u; i < prm.chain; i++) {
        per_rep += items(shape_of(i));
    }
    if (r >= prm.reps * per_rep) {
        return;
    }
    let rep = r / per_rep;
    r = r % per_rep;
    var i = 0u;
    loop {
        let n = items(shape_of(i));
        if (r < n) {
            break;
        }
        r -= n;
        i++;
    }
    let g = rep * prm.chain + i;
    if (g > 0u) {
        if (li == 0u) {
            let want = items(shape_of((g - 1u) % prm.chain));
            // (bounded: a wait that never ends leaves its item unwritten, a
            // mismatch, instead of hanging the GPU)
            for (var n = 0u; n < (1u << 26u); n++) {
                if (atomicLoad(&done[g - 1u]) >= want) {
                    break;
                }
            }
        }
        // the wait, then the product before's stores (device scope in naga)
        workgroupBarrier();
        storageBarrier();
    }
    item(g, r, li);
    // this item's stores before its count
    storageBarrier();
    if (li == 0u) {
        atomicAdd(&done[g], 1u);
    }
}
"#;

/// OpMemoryModel's memory-model operands.
const GLSL450: u32 = 1;
const VULKAN: u32 = 3;

/// The plain source with a cooperative-matrix variable (fragments of `frag`, the
/// adapter's) declared in the persistent and ticketed entry points, and the
/// directives it needs: naga then declares the Vulkan memory model for them.
fn vmm_source(frag: u32) -> String {
    SHADER
        .replace("/*acts*/", "")
        .replace(
            "/*header*/",
            "enable f16;\nenable wgpu_cooperative_matrix;\n",
        )
        .replace(
            "/*vmm*/",
            &format!("var vmm_marker: coop_mat{frag}x{frag}<f32, C>;"),
        )
}

/// The memory model naga declares in the SPIR-V of `entry` of `src`
/// (OpMemoryModel's: 1 GLSL450, 3 Vulkan).
fn memory_model(src: &str, entry: &str) -> anyhow::Result<u32> {
    use vae_ood::gpu::{persistent::spirv, ShaderChecks};
    let caps = naga::valid::Capabilities::all();
    spirv::memory_model(&spirv::compile(src, entry, &[], ShaderChecks::All, caps)?)
}

/// How a run separates the products.
#[derive(Clone, Copy)]
enum Way {
    /// one dispatch per product
    Dispatches,
    /// one dispatch of this many workgroups, a grid barrier between products
    Persistent(u32),
    /// one dispatch of a workgroup per item, each waiting for the product before
    Ticketed,
}

/// The CPU twin of the chain: every repetition's last product's partial sums,
/// added up (the same loops, in f32).
fn chain_cpu(x0: &[f32], w: &[f32], reps: u32) -> Vec<f32> {
    let last = SHAPES[((CHAIN - 1) % 2) as usize];
    let mut total = vec![0f32; (last[0] * last[1] * last[3]) as usize];
    for rep in 0..reps {
        // the product before, summed over its shares: (m, n)
        let mut a: Vec<f32> = (0..128 * 784)
            .map(|e| x0[(((e / 784) + rep as usize) % 128) * 784 + e % 784])
            .collect();
        for i in 0..CHAIN {
            let [m, n, k, splits] = SHAPES[(i % 2) as usize].map(|v| v as usize);
            let b = &w[(i % 2) as usize * 784 * 400..];
            let per = (k.div_ceil(splits)).div_ceil(32) * 32;
            let mut parts = vec![0f32; splits * m * n];
            for s in 0..splits {
                let (k0, k1) = (s * per, ((s + 1) * per).min(k));
                for r in 0..m {
                    for c in 0..n {
                        let mut acc = 0f32;
                        for kk in k0..k1 {
                            acc += a[r * k + kk] * b[kk * n + c];
                        }
                        parts[(s * m + r) * n + c] = acc;
                    }
                }
            }
            if i == CHAIN - 1 {
                for (t, p) in total.iter_mut().zip(&parts) {
                    *t += p;
                }
            }
            a = (0..m * n)
                .map(|e| (0..splits).map(|s| parts[s * m * n + e]).sum())
                .collect();
        }
    }
    total
}

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let reps: u32 = args.next().map(|s| s.parse()).transpose()?.unwrap_or(200);
    let max_groups: u32 = args.next().map(|s| s.parse()).transpose()?.unwrap_or(416);
    anyhow::ensure!(reps > 0, "reps must be at least 1");
    let adapter = gpu::select_adapter()?.ok_or_else(gpu::no_adapter_error)?;
    let info = adapter.get_info();
    let hardware = !gpu::is_software(&info);
    let vmm_asked = std::env::var_os("PERSISTENT_CHAIN_VMM").is_some_and(|v| v == "1");
    let (device, queue, coherent, frag) = common::device_with(&adapter, vmm_asked)?;
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    // input in [0, 1) as pixels; weights uniform with unit variance per output
    // (each product keeps its scale)
    let x0: Vec<f32> = (0..128 * 784).map(|_| rng.random::<f32>()).collect();
    let mut w = Vec::with_capacity(2 * 784 * 400);
    for k in [784f32, 400.0] {
        let a = (3.0 / k).sqrt();
        w.extend((0..784 * 400).map(|_| rng.random_range(-a..a)));
    }
    let init = |label, data: &[f32]| {
        use wgpu::util::DeviceExt;
        device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
            label: Some(label),
            contents: bytemuck::cast_slice(data),
            usage: wgpu::BufferUsages::STORAGE,
        })
    };
    let (x0_buf, w_buf) = (init("x0", &x0), init("w", &w));
    let half = SHAPES.iter().map(|s| s[0] * s[1] * s[3]).max().unwrap() as u64;
    let acts = common::storage(&device, "acts", 2 * half * 4);
    let last = SHAPES[((CHAIN - 1) % 2) as usize];
    let total_len = (last[0] * last[1] * last[3]) as u64;
    let total = common::storage(&device, "total", total_len * 4);
    let counter = common::storage(&device, "counter", 8);
    let done_counts = common::storage(&device, "done", 4 * (CHAIN * reps) as u64);
    let prm = common::params(&device, 48);
    // each product's index at a 256-byte stride (a dynamic offset per dispatch)
    let phases = device.create_buffer(&wgpu::BufferDescriptor {
        label: Some("phases"),
        size: 256 * (CHAIN as u64) * reps as u64,
        usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    });
    let mut words = vec![0u32; 64 * (CHAIN * reps) as usize];
    for g in 0..CHAIN * reps {
        words[64 * g as usize] = g;
    }
    queue.write_buffer(&phases, 0, bytemuck::cast_slice(&words));
    let uniform = |dynamic| wgpu::BindingType::Buffer {
        ty: wgpu::BufferBindingType::Uniform,
        has_dynamic_offset: dynamic,
        min_binding_size: None,
    };
    let storage = |read_only| wgpu::BindingType::Buffer {
        ty: wgpu::BufferBindingType::Storage { read_only },
        has_dynamic_offset: false,
        min_binding_size: None,
    };
    let entry = |binding, ty| wgpu::BindGroupLayoutEntry {
        binding,
        visibility: wgpu::ShaderStages::COMPUTE,
        ty,
        count: None,
    };
    let bgl0 = device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
        label: Some("chain"),
        entries: &[
            entry(0, uniform(false)),
            entry(1, storage(true)),
            entry(2, storage(true)),
            entry(3, storage(false)),
            entry(4, storage(false)),
            entry(5, storage(false)),
            entry(6, storage(false)),
        ],
    });
    let bgl1 = device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
        label: Some("phase"),
        entries: &[entry(0, uniform(true))],
    });
    let layout = device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
        label: Some("chain"),
        bind_group_layouts: &[Some(&bgl0), Some(&bgl1)],
        immediate_size: 0,
    });
    let bind0 = common::bind_buffers(
        &device,
        "chain",
        &bgl0,
        &[&prm, &x0_buf, &w_buf, &acts, &total, &counter, &done_counts],
    );
    let bind1 = device.create_bind_group(&wgpu::BindGroupDescriptor {
        label: Some("phase"),
        layout: &bgl1,
        entries: &[wgpu::BindGroupEntry {
            binding: 0,
            resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                buffer: &phases,
                offset: 0,
                size: std::num::NonZeroU64::new(16),
            }),
        }],
    });
    let pipeline = |src: &str, entry: &str| {
        let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
            label: Some(entry),
            source: wgpu::ShaderSource::Wgsl(src.into()),
        });
        common::compute_pipeline(&device, Some(&layout), &module, entry)
    };
    let plain = SHADER.replace("/*acts*/", "");
    let co = SHADER.replace("/*acts*/", "@coherent");
    let dispatched = pipeline(&plain, "dispatched");
    let persistent = pipeline(&plain, "persistent");
    let persistent_co = coherent.then(|| pipeline(&co, "persistent"));
    let ticketed = pipeline(&plain, "ticketed");
    let ticketed_co = coherent.then(|| pipeline(&co, "ticketed"));
    // (with PERSISTENT_CHAIN_VMM=1 where the tensor cores are there: the plain ways
    // with their entry points under the Vulkan memory model)
    let vmm = match frag {
        Some(f) => {
            let src = vmm_source(f);
            for entry in ["persistent", "ticketed"] {
                anyhow::ensure!(
                    memory_model(&plain, entry)? == GLSL450 && memory_model(&src, entry)? == VULKAN,
                    "naga did not declare the memory models expected for {entry}"
                );
            }
            Some((pipeline(&src, "persistent"), pipeline(&src, "ticketed")))
        }
        None => {
            if vmm_asked {
                println!(
                    "PERSISTENT_CHAIN_VMM=1: not run, {}",
                    gpu::coop_support(&adapter).err().unwrap_or_default()
                );
            }
            None
        }
    };
    // (the totals come back through this)
    let staging = device.create_buffer(&wgpu::BufferDescriptor {
        label: Some("staging"),
        size: total_len * 4,
        usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    });
    // one run: the chain of reps · CHAIN products one way; µs per product and the
    // total
    let run = |p: &wgpu::ComputePipeline, way: Way| -> anyhow::Result<(f64, Vec<f32>)> {
        let groups = match way {
            Way::Persistent(g) => Some(g),
            _ => None,
        };
        let mut words = [0u32; 12];
        for (i, s) in SHAPES.iter().enumerate() {
            words[4 * i..4 * i + 4].copy_from_slice(s);
        }
        words[8..12].copy_from_slice(&[reps, groups.unwrap_or(0), CHAIN, 0]);
        queue.write_buffer(&prm, 0, bytemuck::cast_slice(&words));
        let mut enc = device.create_command_encoder(&Default::default());
        enc.clear_buffer(&total, 0, None);
        enc.clear_buffer(&counter, 0, None);
        enc.clear_buffer(&done_counts, 0, None);
        {
            let mut pass = enc.begin_compute_pass(&Default::default());
            pass.set_pipeline(p);
            pass.set_bind_group(0, &bind0, &[]);
            let items = |g: u32| {
                let s = SHAPES[(g % CHAIN % 2) as usize];
                s[0].div_ceil(32) * s[1].div_ceil(32) * s[3]
            };
            match way {
                Way::Persistent(g) => {
                    pass.set_bind_group(1, &bind1, &[0]);
                    pass.dispatch_workgroups(g, 1, 1);
                }
                Way::Ticketed => {
                    // (a grid of 1,024-wide rows: a dimension holds at most 65,535)
                    let all: u32 = (0..CHAIN * reps).map(items).sum();
                    pass.set_bind_group(1, &bind1, &[0]);
                    pass.dispatch_workgroups(1024, all.div_ceil(1024), 1);
                }
                Way::Dispatches => {
                    for g in 0..CHAIN * reps {
                        pass.set_bind_group(1, &bind1, &[256 * g]);
                        pass.dispatch_workgroups(items(g), 1, 1);
                    }
                }
            }
        }
        let (took, bytes) = common::submit_and_read(&device, &queue, enc, &total, &staging)?;
        let out = bytemuck::cast_slice::<u8, f32>(&bytes).to_vec();
        Ok((took.as_secs_f64() * 1e6 / (CHAIN * reps) as f64, out))
    };
    println!(
        "{} ({:?}, {:?}); {reps} repetitions of a chain of {CHAIN} split-K products (128×400 K 784 in 8 shares, 128×784 K 400 in 2)",
        info.name, info.backend, info.device_type
    );
    // the dispatch chain: the reference for the persistent runs' totals
    let mut chain_t = Vec::new();
    let mut reference = Vec::new();
    for round in 0..4 {
        let (us, out) = run(&dispatched, Way::Dispatches)?;
        if round == 0 {
            reference = out;
        } else {
            chain_t.push(us);
            anyhow::ensure!(
                out == reference,
                "two runs of the dispatch chain gave different totals"
            );
        }
    }
    // against the CPU twin where that is quick (each repetition ~0.4 GFLOP on one core)
    if reps <= 4 {
        let want = chain_cpu(&x0, &w, reps);
        let worst = reference
            .iter()
            .zip(&want)
            .map(|(g, c)| (g - c).abs() / c.abs().max(1.0))
            .fold(0f32, f32::max);
        // (f32 sums of up to 784 products of unit-scale values, in the same order
        // but maybe fused multiply-adds on one side: far below 1e-3)
        anyhow::ensure!(
            worst < 1e-3,
            "the dispatch chain's total is off the CPU twin's by {worst:e}"
        );
        println!("dispatch chain against the CPU twin: largest relative difference {worst:.1e}");
    }
    let med = |v: &mut Vec<f64>| {
        v.sort_by(|a, b| a.total_cmp(b));
        v[v.len() / 2]
    };
    println!(
        "µs per product, medians of 3 runs after a warm-up; mismatches: elements of the total (of {total_len}) that differ from the dispatch chain's, all 4 runs{}",
        if coherent {
            ""
        } else {
            " (@coherent not offered by this adapter)"
        }
    );
    println!("{:>24} {:>10} {:>12}", "way", "µs", "mismatches");
    println!(
        "{:>24} {:>10.2} {:>12}",
        "dispatches",
        med(&mut chain_t),
        "–"
    );
    // (a CPU adapter need not run workgroups at once: one only there)
    let groups: Vec<u32> = if hardware {
        [132, 264, 416]
            .into_iter()
            .filter(|&g| g <= max_groups)
            .collect()
    } else {
        vec![1]
    };
    // (name, pipeline, way; whether one workgroup loops over a product's items)
    let mut ways = vec![("ticketed, plain".to_string(), &ticketed, Way::Ticketed)];
    if let Some(p) = &ticketed_co {
        ways.push(("ticketed, @coherent".to_string(), p, Way::Ticketed));
    }
    if let Some((_, p)) = &vmm {
        ways.push(("ticketed, plain, VMM".to_string(), p, Way::Ticketed));
    }
    for g in groups {
        ways.push((
            format!("persistent {g}, plain"),
            &persistent,
            Way::Persistent(g),
        ));
        if let Some(p) = &persistent_co {
            ways.push((format!("persistent {g}, @coherent"), p, Way::Persistent(g)));
        }
        if let Some((p, _)) = &vmm {
            ways.push((format!("persistent {g}, plain, VMM"), p, Way::Persistent(g)));
        }
    }
    let strict = std::env::var_os("PERSISTENT_CHAIN_STRICT").is_some_and(|v| v == "1");
    let mut any_bad = false;
    for (name, p, way) in ways {
        let (mut t, mut bad) = (Vec::new(), 0usize);
        for round in 0..4 {
            let (us, out) = run(p, way)?;
            bad += out.iter().zip(&reference).filter(|(a, b)| a != b).count();
            if round > 0 {
                t.push(us);
            }
        }
        println!("{name:>24} {:>10.2} {bad:>12}", med(&mut t));
        any_bad |= bad > 0;
        if bad > 0 && !hardware {
            println!(
                "{:>24} (Mesa 22.3's lavapipe cuts long loops short; 26.1's runs them through: the file's comment)",
                ""
            );
        }
    }
    anyhow::ensure!(
        !(strict && any_bad),
        "PERSISTENT_CHAIN_STRICT=1: a one-dispatch way's total differs from the dispatch chain's"
    );
    Ok(())
}
