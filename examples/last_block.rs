//! Can a split-K product reduce its own partial sums, with no dispatch for it? The
//! training step's dispatch boundaries cost 4–5 µs each on an H100 (README, "Where
//! the time goes"), and a persistent kernel cannot replace them: after a grid
//! barrier, plain loads of other workgroups' stores read stale values
//! (`examples/grid_sync.rs`), and waiting on other workgroups needs them all to run
//! at once. The "last block" pattern needs neither: each split's workgroup stores
//! its partial sums, then adds one to its output tile's counter; the one that sees
//! it was the last of the tile's `splits` adds the partials up (the work a reduce
//! dispatch or a folded reduce in the next kernel does now, and the place an
//! epilogue such as the BCE could run without an unsplit product) and resets the
//! counter for the next dispatch. Nobody waits, so any number of workgroups may
//! run.
//!
//! What is not known is whether the last workgroup sees the others' stores. The
//! grid barrier's stale reads were of addresses the reader had read before in the
//! same dispatch (its cache kept them); the last workgroup of a tile reads its
//! partners' partials for the first time. This experiment counts the stale reads
//! four ways: partials as vec4<f32> read with plain loads, or as u32 bit patterns
//! stored and read with atomics (which go to L2); each "cold" (as in a product)
//! and "warm" (every workgroup first reads its tile's old partials, to put them in
//! its cache: the worst case). It times, per repetition in one compute pass:
//!
//! - `floor`: the splits' stores alone, one dispatch (one boundary);
//! - `two`: the stores, then a reduce dispatch of one workgroup per tile (two
//!   boundaries: what the step does where a reduce is a dispatch);
//! - `last`: the stores and the last block's reduce, one dispatch.
//!
//! `two − last` is what a last-block reduce saves over a reduce dispatch, and
//! `last − floor` what its counter and tail cost. Shapes: output tiles × splits of
//! the step's products (fc4 forward 100 × 2, fc1 forward 52 × 8, a 400 × 784 weight
//! gradient 325 × 4, a head-sized product 13 × 32); each workgroup stores 256 × 4
//! floats, as a 32 × 32 matmul tile does. Exact small integers, so every sum is
//! checked exactly. A kernel experiment for deciding whether to build last-block
//! epilogues, not part of the training path; it runs on any adapter (on lavapipe it
//! checks the kernels' logic, not a GPU's caches). The BCE epilogue on the split
//! decoder-output product (the default since 2026-11-27), stores and reads its partial sums as atomics
//! (`shaders/matmul_partial_atomic.wgsl`), the way WGSL orders: the `last_at`
//! column is its cost.
//!
//! A second table chains two levels, as a fusion of fc1's product with the latent
//! forward would (README, "The next candidate"): each tile's last share sums the
//! tile and counts it in its band (a row of tiles), whose last tile sums the band
//! (`last2`), against the stores, a tile reduce and a band reduce dispatch
//! (`three`: three boundaries). Shapes: bands × tiles per band × splits of fc1's
//! forward (4 × 13 × 4) and fc4's (4 × 25 × 2).
//!
//! A third table is about the boundaries left once the last blocks have taken
//! what they can (four per step with every fusion: fc4's product reads all of h3,
//! the triple all of dh1 — a fan-out, which a last block cannot do): P producers
//! store their parts and count themselves, C consumers wait until all P have and
//! then read one each (`wait`, `wait_at` with atomics), against a producers'
//! dispatch and a consumers' (`two`). Waiting inside a dispatch deadlocks if a
//! consumer holds a place on the GPU that a producer it waits for needs; here each
//! workgroup takes a ticket (an atomic counter) as it starts, and the first P to
//! start produce, so a consumer waits only for workgroups that have started (as
//! CUB's decoupled look-back does). Shapes (P × C): 4 × 100 (fc1's band tails, then
//! fc4's tiles), 208 × 338 (dh3's K shares, then the triple's tiles), 4 × 325 and
//! 416 × 416. On lavapipe consumers that do not wait read stale parts at 416 × 416
//! only (its workgroups run nearly in ticket order), so there it checks the kernels'
//! logic; on a GPU `two − wait` is what each such boundary would save.
//!
//! A third kind of partials (added 2026-11-27; run on an H200 that day: no stale
//! value, at plain loads' cost): plain vec4 loads from a buffer declared
//! `@coherent` (wgpu 30's `Features::MEMORY_DECORATION_COHERENT`, on every
//! Vulkan adapter: SPIR-V's `Coherent` decoration, whose loads see the stores a barrier made visible
//! instead of the reader's cached copy). On an H200 the plain loads read stale
//! partials only when warm, and plain waits cost 0.6–2.9 µs less than atomic
//! ones; the `*_co` columns say whether coherent loads get the plain ones' speed
//! with the atomic ones' correctness. If they do, the waits would save ~2 µs per
//! boundary (`two − wait`), and a last-block reduce would cost less than with
//! atomics (`last_at − last_co`).
//!
//!   cargo run --release --example last_block [reps]
mod common;

use common::Count;
use vae_ood::gpu;

// The partials' storage and access: for `array` (at `binding`), `load_{what}(i)`
// and `store_{what}(i, v)` of vec4s, as plain vec4<f32> or as f32 bits in atomics;
// then the common kernels (COMMON).
fn plain_array(array: &str, binding: u32, what: &str) -> String {
    format!(
        r#"
@group(0) @binding({binding}) var<storage, read_write> {array}: array<vec4<f32>>;
fn load_{what}(i: u32) -> vec4<f32> {{
    return {array}[i];
}}
fn store_{what}(i: u32, v: vec4<f32>) {{
    {array}[i] = v;
}}
"#
    )
}

// as plain_array, the buffer declared `@coherent`
fn coherent_array(array: &str, binding: u32, what: &str) -> String {
    format!("\n@coherent{}", plain_array(array, binding, what))
}

fn atomic_array(array: &str, binding: u32, what: &str) -> String {
    format!(
        r#"
@group(0) @binding({binding}) var<storage, read_write> {array}: array<atomic<u32>>;
fn load_{what}(i: u32) -> vec4<f32> {{
    return vec4<f32>(
        bitcast<f32>(atomicLoad(&{array}[4u * i])),
        bitcast<f32>(atomicLoad(&{array}[4u * i + 1u])),
        bitcast<f32>(atomicLoad(&{array}[4u * i + 2u])),
        bitcast<f32>(atomicLoad(&{array}[4u * i + 3u])),
    );
}}
fn store_{what}(i: u32, v: vec4<f32>) {{
    atomicStore(&{array}[4u * i], bitcast<u32>(v.x));
    atomicStore(&{array}[4u * i + 1u], bitcast<u32>(v.y));
    atomicStore(&{array}[4u * i + 2u], bitcast<u32>(v.z));
    atomicStore(&{array}[4u * i + 3u], bitcast<u32>(v.w));
}}
"#
    )
}

const COMMON: &str = r#"
// warm: every workgroup first reads its tile's old partials (into its cache);
// band: tiles per band of the two-level runs
struct P { tiles: u32, splits: u32, warm: u32, band: u32 }
@group(0) @binding(0) var<storage, read_write> counters: array<atomic<u32>>; // (tiles)
@group(0) @binding(2) var<storage, read_write> outs: array<vec4<f32>>; // (tiles or bands, 256)
// (bands) how many of a band's tiles have stored their sums (two-level runs)
@group(0) @binding(7) var<storage, read_write> band_counters: array<atomic<u32>>;
var<workgroup> band_ws: u32;
// (tiles) each tile's generation: bumped by its reduce, so every repetition stores
// other values than the one before
@group(0) @binding(3) var<storage, read_write> gens: array<u32>;
@group(0) @binding(4) var<storage, read_write> errors: atomic<u32>;
@group(0) @binding(5) var<uniform> prm: P;
var<workgroup> last_ws: u32;

// split s's partial sums, thread li's four, of tile t in generation g: small
// integers (exact in f32, and so their sums)
fn value(g: u32, t: u32, s: u32, li: u32) -> vec4<f32> {
    let base = (g * 31u + t * 7u + s * 3u + li) % 4096u;
    return vec4<f32>(f32(base), f32(base + 1u), f32(base + 2u), f32(base + 3u));
}

fn store_split(t: u32, s: u32, li: u32, g: u32) {
    if (prm.warm != 0u) {
        var acc = vec4<f32>(0.0);
        for (var q = 0u; q < prm.splits; q++) {
            acc += load_part((t * prm.splits + q) * 256u + li);
        }
        // (never true: keeps the reads)
        if (acc.x < 0.0) {
            atomicAdd(&errors, 1000000u);
        }
    }
    store_part((t * prm.splits + s) * 256u + li, value(g, t, s, li));
}

// tile t's partials added up in split order, each checked
fn tile_total(t: u32, li: u32, g: u32) -> vec4<f32> {
    var acc = vec4<f32>(0.0);
    for (var s = 0u; s < prm.splits; s++) {
        let v = load_part((t * prm.splits + s) * 256u + li);
        if (any(v != value(g, t, s, li))) {
            atomicAdd(&errors, 1u);
        }
        acc += v;
    }
    return acc;
}

fn reduce_tile(t: u32, li: u32, g: u32) {
    outs[t * 256u + li] = tile_total(t, li, g);
}

// band b's tile sums added up, checked against what they should be (two-level)
fn band_total(b: u32, li: u32) -> vec4<f32> {
    var acc = vec4<f32>(0.0);
    var want = vec4<f32>(0.0);
    for (var k = 0u; k < prm.band; k++) {
        let t = b * prm.band + k;
        acc += load_tsum(t * 256u + li);
        let g = gens[t];
        for (var s = 0u; s < prm.splits; s++) {
            want += value(g, t, s, li);
        }
    }
    if (any(acc != want)) {
        atomicAdd(&errors, 1u);
    }
    return acc;
}

// band b's tiles on to their next generation (after every thread read theirs)
fn bump_band(b: u32, li: u32) {
    workgroupBarrier();
    if (li < prm.band) {
        let t = b * prm.band + li;
        gens[t] = gens[t] + 1u;
    }
}

// the splits' stores alone: workgroup x = tile · splits + split
@compute @workgroup_size(256)
fn stores(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let t = wg.x / prm.splits;
    store_split(t, wg.x % prm.splits, li, gens[t]);
}

// a reduce dispatch: workgroup x = tile
@compute @workgroup_size(256)
fn reduce(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let t = wg.x;
    let g = gens[t];
    reduce_tile(t, li, g);
    // (every thread has read gens[t] before it is bumped)
    workgroupBarrier();
    if (li == 0u) {
        gens[t] = g + 1u;
    }
}

// two-level reduce dispatches: each tile's sum (workgroup x = tile), then each
// band's (workgroup x = band)
@compute @workgroup_size(256)
fn tile_reduce(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let t = wg.x;
    store_tsum(t * 256u + li, tile_total(t, li, gens[t]));
}

@compute @workgroup_size(256)
fn band_reduce(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    outs[wg.x * 256u + li] = band_total(wg.x, li);
    bump_band(wg.x, li);
}

// two levels in one dispatch: the last of a tile's splits sums the tile and
// counts it in its band; the last of a band's tiles sums the band
@compute @workgroup_size(256)
fn last2(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let t = wg.x / prm.splits;
    let b = t / prm.band;
    store_split(t, wg.x % prm.splits, li, gens[t]);
    storageBarrier();
    if (li == 0u) {
        last_ws = select(0u, 1u, atomicAdd(&counters[t], 1u) == prm.splits - 1u);
    }
    if (workgroupUniformLoad(&last_ws) == 1u) {
        storageBarrier();
        store_tsum(t * 256u + li, tile_total(t, li, gens[t]));
        storageBarrier();
        if (li == 0u) {
            atomicStore(&counters[t], 0u);
            band_ws = select(0u, 1u, atomicAdd(&band_counters[b], 1u) == prm.band - 1u);
        }
        if (workgroupUniformLoad(&band_ws) == 1u) {
            storageBarrier();
            outs[b * 256u + li] = band_total(b, li);
            if (li == 0u) {
                atomicStore(&band_counters[b], 0u);
            }
            bump_band(b, li);
        }
    }
}

// Fan-out (the third table): P producers store their parts, C consumers read them
// (consumer c reads producer c % P's, checked), the last consumer to finish
// resets the counters and bumps the generation (gens[0]). fan: (ticket, producers
// done, consumers done). prm.tiles = P, prm.splits = C.
@group(0) @binding(8) var<storage, read_write> fan: array<atomic<u32>>;
var<workgroup> fan_ws: u32;

fn fan_produce(p: u32, li: u32, g: u32) {
    store_part(p * 256u + li, value(g, p, 0u, li));
    // this workgroup's stores before its count
    storageBarrier();
    if (li == 0u) {
        atomicAdd(&fan[1], 1u);
    }
}

fn fan_consume(c: u32, li: u32, g: u32) {
    let p = c % prm.tiles;
    let v = load_part(p * 256u + li);
    if (any(v != value(g, p, 0u, li))) {
        atomicAdd(&errors, 1u);
    }
    // (every thread has read, and read g, before the count)
    workgroupBarrier();
    if (li == 0u && atomicAdd(&fan[2], 1u) + 1u == prm.splits) {
        atomicStore(&fan[0], 0u);
        atomicStore(&fan[1], 0u);
        atomicStore(&fan[2], 0u);
        gens[0] = g + 1u;
    }
}

// two dispatches: the producers (P workgroups), then the consumers (C)
@compute @workgroup_size(256)
fn fan_store(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    fan_produce(wg.x, li, gens[0]);
}

@compute @workgroup_size(256)
fn fan_read(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    fan_consume(wg.x, li, gens[0]);
}

// one dispatch of P + C workgroups: each takes a ticket as it starts; the first P
// to start produce, the others wait until all P have counted, then consume. A
// consumer waits only for workgroups that started before it (they hold earlier
// tickets), so it needs no more workgroups resident than the GPU runs anyway,
// whatever order it starts them in (the grid barrier of examples/grid_sync.rs
// needed every workgroup resident at once).
@compute @workgroup_size(256)
fn fan_wait(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    if (li == 0u) {
        fan_ws = atomicAdd(&fan[0], 1u);
    }
    let ticket = workgroupUniformLoad(&fan_ws);
    let g = gens[0];
    if (ticket < prm.tiles) {
        fan_produce(ticket, li, g);
    } else {
        if (li == 0u) {
            // (bounded: a wait that never ends counts a million errors instead of
            // hanging the GPU)
            var n = 0u;
            loop {
                if (atomicLoad(&fan[1]) >= prm.tiles) {
                    break;
                }
                n++;
                if (n == 1u << 26u) {
                    atomicAdd(&errors, 1000000u);
                    break;
                }
            }
        }
        // the wait, then the producers' stores (device scope in naga)
        workgroupBarrier();
        storageBarrier();
        fan_consume(ticket - prm.tiles, li, g);
    }
}

// stores, then the last of a tile's splits reduces it
@compute @workgroup_size(256)
fn last(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let t = wg.x / prm.splits;
    let g = gens[t];
    store_split(t, wg.x % prm.splits, li, g);
    // this workgroup's stores before its count (device scope in naga)
    storageBarrier();
    if (li == 0u) {
        last_ws = select(0u, 1u, atomicAdd(&counters[t], 1u) == prm.splits - 1u);
    }
    if (workgroupUniformLoad(&last_ws) == 1u) {
        // the others' stores after their counts
        storageBarrier();
        reduce_tile(t, li, g);
        workgroupBarrier();
        if (li == 0u) {
            atomicStore(&counters[t], 0u);
            gens[t] = g + 1u;
        }
    }
}
"#;

/// One way of running the repetitions.
#[derive(Clone, Copy, PartialEq)]
enum Way {
    Floor,
    Two,
    Last,
    /// two levels (tiles in bands): stores, a tile reduce and a band reduce
    /// dispatch
    Three,
    /// two levels in one dispatch
    Last2,
    /// fan-out: a producers' dispatch, then a consumers'
    FanTwo,
    /// fan-out in one dispatch, consumers waiting for the producers that started
    /// before them
    FanWait,
}

struct Rig {
    device: wgpu::Device,
    queue: wgpu::Queue,
    errors: Count,
    prm: wgpu::Buffer,
}

/// A module's three pipelines and their bind group.
struct Kernels {
    stores: wgpu::ComputePipeline,
    reduce: wgpu::ComputePipeline,
    last: wgpu::ComputePipeline,
    tile_reduce: wgpu::ComputePipeline,
    band_reduce: wgpu::ComputePipeline,
    last2: wgpu::ComputePipeline,
    fan_store: wgpu::ComputePipeline,
    fan_read: wgpu::ComputePipeline,
    fan_wait: wgpu::ComputePipeline,
    bind: wgpu::BindGroup,
}

/// A run's shape: output tiles, K shares per tile, and tiles per band (two-level
/// runs; 1 for one level); for the fan-out runs, producers, consumers and 1.
#[derive(Clone, Copy)]
struct Shape {
    tiles: u32,
    splits: u32,
    band: u32,
}

impl Rig {
    /// `reps` repetitions one way; µs per repetition and the stale reads counted.
    fn time(
        &self,
        k: &Kernels,
        way: Way,
        reps: u32,
        shape: Shape,
        warm: bool,
    ) -> anyhow::Result<(f64, u32)> {
        let Shape {
            tiles,
            splits,
            band,
        } = shape;
        let words = [tiles, splits, warm as u32, band];
        self.queue
            .write_buffer(&self.prm, 0, bytemuck::cast_slice(&words));
        // each repetition's dispatches: (pipeline, workgroups)
        let all = tiles * splits;
        let steps: Vec<(&wgpu::ComputePipeline, u32)> = match way {
            Way::Floor => vec![(&k.stores, all)],
            Way::Two => vec![(&k.stores, all), (&k.reduce, tiles)],
            Way::Last => vec![(&k.last, all)],
            Way::Three => vec![
                (&k.stores, all),
                (&k.tile_reduce, tiles),
                (&k.band_reduce, tiles / band),
            ],
            Way::Last2 => vec![(&k.last2, all)],
            Way::FanTwo => vec![(&k.fan_store, tiles), (&k.fan_read, splits)],
            Way::FanWait => vec![(&k.fan_wait, tiles + splits)],
        };
        let mut enc = self.device.create_command_encoder(&Default::default());
        enc.clear_buffer(&self.errors.on_gpu, 0, None);
        {
            let mut pass = enc.begin_compute_pass(&Default::default());
            pass.set_bind_group(0, &k.bind, &[]);
            for _ in 0..reps {
                for (pipeline, groups) in &steps {
                    pass.set_pipeline(pipeline);
                    pass.dispatch_workgroups(*groups, 1, 1);
                }
            }
        }
        let (took, errors) = self
            .errors
            .submit_and_read(&self.device, &self.queue, enc)?;
        let us = took.as_secs_f64() * 1e6 / reps as f64;
        Ok((us, errors))
    }
}

fn main() -> anyhow::Result<()> {
    let reps: u32 = std::env::args()
        .nth(1)
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(1000);
    anyhow::ensure!(reps > 0, "reps must be at least 1");
    let adapter = gpu::select_adapter()?.ok_or_else(gpu::no_adapter_error)?;
    let info = adapter.get_info();
    let (device, queue, coherent_offered) = common::device_with_coherent(&adapter)?;
    // (output tiles, splits) of the step's split-K products
    let shapes: [(u32, u32); 4] = [(100, 2), (52, 8), (325, 4), (13, 32)];
    // (row bands, column tiles per band, splits): fc1's forward (128 images, 400
    // hidden units, 4 K shares) and fc4's (784 pixels, 2 K shares)
    let shapes2: [(u32, u32, u32); 2] = [(4, 13, 4), (4, 25, 2)];
    let most = shapes.iter().map(|&(t, s)| t * s).max().unwrap() as u64;
    let most_tiles = shapes.iter().map(|&(t, _)| t).max().unwrap() as u64;
    let storage = |label, size| common::storage(&device, label, size);
    // (zeroed at creation: counters start at 0, and every tile's last block
    // resets its own)
    let counters = storage("counters", most_tiles * 4);
    let parts = storage("parts", most * 256 * 16);
    let outs = storage("outs", most_tiles * 256 * 16);
    let gens = storage("gens", most_tiles * 4);
    let tsums = storage("tile sums", most_tiles * 256 * 16);
    let band_counters = storage("band counters", most_tiles * 4);
    let fan = storage("fan-out counters", 16);
    let errors = Count::new(&device, "errors");
    let prm = common::params(&device, 16);
    let kernels = |name: &str, part: &str| -> Kernels {
        let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
            label: Some(name),
            source: wgpu::ShaderSource::Wgsl(format!("{part}{COMMON}").into()),
        });
        // (one explicit layout for the three entry points: `reduce` and `stores`
        // do not use every binding)
        let ro = |binding, ty| wgpu::BindGroupLayoutEntry {
            binding,
            visibility: wgpu::ShaderStages::COMPUTE,
            ty,
            count: None,
        };
        let rw = wgpu::BindingType::Buffer {
            ty: wgpu::BufferBindingType::Storage { read_only: false },
            has_dynamic_offset: false,
            min_binding_size: None,
        };
        let mut entries: Vec<wgpu::BindGroupLayoutEntry> =
            [0, 1, 2, 3, 4, 6, 7, 8].map(|b| ro(b, rw)).to_vec();
        entries.push(ro(
            5,
            wgpu::BindingType::Buffer {
                ty: wgpu::BufferBindingType::Uniform,
                has_dynamic_offset: false,
                min_binding_size: None,
            },
        ));
        let bgl = device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
            label: Some(name),
            entries: &entries,
        });
        let layout = device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
            label: Some(name),
            bind_group_layouts: &[Some(&bgl)],
            immediate_size: 0,
        });
        let pipeline =
            |entry: &str| common::compute_pipeline(&device, Some(&layout), &module, entry);
        let bind = common::bind_buffers(
            &device,
            name,
            &bgl,
            &[
                &counters,
                &parts,
                &outs,
                &gens,
                &errors.on_gpu,
                &prm,
                &tsums,
                &band_counters,
                &fan,
            ],
        );
        Kernels {
            stores: pipeline("stores"),
            reduce: pipeline("reduce"),
            last: pipeline("last"),
            tile_reduce: pipeline("tile_reduce"),
            band_reduce: pipeline("band_reduce"),
            last2: pipeline("last2"),
            fan_store: pipeline("fan_store"),
            fan_read: pipeline("fan_read"),
            fan_wait: pipeline("fan_wait"),
            bind,
        }
    };
    // parts: (tiles, splits, 256); tile sums: (tiles, 256)
    let plain = kernels(
        "plain",
        &(plain_array("parts", 1, "part") + &plain_array("tsums", 6, "tsum")),
    );
    let atomic = kernels(
        "atomic",
        &(atomic_array("parts", 1, "part") + &atomic_array("tsums", 6, "tsum")),
    );
    // (None where the adapter does not offer `@coherent`)
    let coherent = coherent_offered.then(|| {
        kernels(
            "coherent",
            &(coherent_array("parts", 1, "part") + &coherent_array("tsums", 6, "tsum")),
        )
    });
    let rig = Rig {
        device: device.clone(),
        queue,
        errors,
        prm,
    };
    println!(
        "{} ({:?}, {:?}); {reps} repetitions per run, 256-thread workgroups storing 256 × vec4 each",
        info.name, info.backend, info.device_type
    );
    println!(
        "µs per repetition, medians of 3 runs after a warm-up; stale = partials the reduce read wrong (all 4 runs); _at: atomic loads, _co: @coherent plain loads{}",
        if coherent.is_some() {
            ""
        } else {
            " (not offered by this adapter: –)"
        }
    );
    println!(
        "{:>13} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8} {:>10} | stale: two, last plain cold/warm, atomic cold/warm, coherent cold/warm",
        "tiles×splits", "floor", "two", "last", "last_at", "last_co", "two−last", "last−floor"
    );
    let med = |v: &mut Vec<f64>| {
        v.sort_by(|a, b| a.total_cmp(b));
        v[v.len() / 2]
    };
    // Each shape: the stores alone, the reduce dispatch(es), the last-block reduce
    // with plain, atomic and coherent partials (cold; the warm runs' times are not
    // printed: their extra reads are not a product's); medians of rounds 1–3, stale
    // reads of all four. Times: floor, dispatches, last plain, atomic[, coherent];
    // stale (in the runs' order): floor, dispatches, plain cold, atomic cold, plain
    // warm, atomic warm[, coherent cold, coherent warm].
    let measure = |shape: Shape,
                   dispatches: Way,
                   last: Way|
     -> anyhow::Result<(Vec<f64>, Vec<u32>)> {
        let mut runs: Vec<(&Kernels, Way, bool)> = vec![
            (&plain, Way::Floor, false),
            (&plain, dispatches, false),
            (&plain, last, false),
            (&atomic, last, false),
            (&plain, last, true),
            (&atomic, last, true),
        ];
        if let Some(co) = &coherent {
            runs.push((co, last, false));
            runs.push((co, last, true));
        }
        let mut times = vec![Vec::new(); runs.len()];
        let mut stale = vec![0u32; runs.len()];
        for round in 0..4 {
            for (i, &(k, way, warm)) in runs.iter().enumerate() {
                let (us, e) = rig.time(k, way, reps, shape, warm)?;
                stale[i] += e;
                if round > 0 {
                    times[i].push(us);
                }
            }
        }
        anyhow::ensure!(
            stale[1] == 0,
            "the reduce dispatches read {} stale values: across a dispatch boundary every store must be seen",
            stale[1]
        );
        // (the cold runs' times: floor, dispatches, last plain, atomic[, coherent])
        let t: Vec<f64> = times.iter_mut().map(&med).collect();
        let mut cold = t[..4].to_vec();
        cold.extend(t.get(6));
        Ok((cold, stale))
    };
    let dash = |v: Option<String>| v.unwrap_or_else(|| "–".to_string());
    let row = |name: String, t: &[f64], stale: &[u32]| {
        println!(
            "{:>13} {:8.2} {:8.2} {:8.2} {:8.2} {:>8} {:8.2} {:10.2} | {} / {} {} / {} {} / {} {}",
            name,
            t[0],
            t[1],
            t[2],
            t[3],
            dash(t.get(4).map(|v| format!("{v:.2}"))),
            t[1] - t[2],
            t[2] - t[0],
            stale[1],
            stale[2],
            stale[4],
            stale[3],
            stale[5],
            dash(stale.get(6).map(u32::to_string)),
            dash(stale.get(7).map(u32::to_string)),
        );
    };
    let (mut any_stale_plain, mut any_stale_atomic, mut any_stale_coherent) = (false, false, false);
    let mut note = |stale: &[u32]| {
        any_stale_plain |= stale[2] + stale[4] > 0;
        any_stale_atomic |= stale[3] + stale[5] > 0;
        any_stale_coherent |= stale.iter().skip(6).sum::<u32>() > 0;
    };
    for (tiles, splits) in shapes {
        let shape = Shape {
            tiles,
            splits,
            band: 1,
        };
        let (t, stale) = measure(shape, Way::Two, Way::Last)?;
        row(format!("{tiles}×{splits}"), &t, &stale);
        note(&stale);
    }
    // Two levels: the last share of each tile sums it and counts it in its band
    // (of a row of tiles), whose last tile sums the band — what a fusion of fc1's
    // product with the latent forward would chain (README, "The next candidate");
    // against stores, a tile reduce and a band reduce dispatch (three boundaries).
    println!("two levels: tiles summed by their last share, bands by their last tile");
    println!(
        "{:>13} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8} {:>10} | stale: three, last2 plain cold/warm, atomic cold/warm, coherent cold/warm",
        "bands×tiles×K", "floor", "three", "last2", "last2_at", "last2_co", "3−last2", "last2−floor"
    );
    for (bands, band, splits) in shapes2 {
        let shape = Shape {
            tiles: bands * band,
            splits,
            band,
        };
        let (t, stale) = measure(shape, Way::Three, Way::Last2)?;
        row(format!("{bands}×{band}×{splits}"), &t, &stale);
        note(&stale);
    }
    // Fan-out: what a dispatch boundary between a product and the kernels that read
    // it whole would cost if the readers waited for the writers inside one dispatch
    // (the step's remaining boundaries are all of this kind: fc4 reads all of h3,
    // the triple all of dh1): P producers, C consumers each reading one producer's
    // part after all P have stored theirs, against two dispatches.
    println!("fan-out: C consumers wait for P producers (ticketed: the first P workgroups to start produce)");
    println!(
        "{:>13} {:>8} {:>8} {:>8} {:>8} {:>8} | stale: two, wait plain, atomic, coherent",
        "P×C", "two", "wait", "wait_at", "wait_co", "two−wait"
    );
    // (producers, consumers): fc1's band tails → fc4's tiles, dh3's shares → the
    // triple's tiles, the bands' tails → the triple's dW1 tiles, and a large one
    let fan_shapes: [(u32, u32); 4] = [(4, 100), (208, 338), (4, 325), (416, 416)];
    for (p, c) in fan_shapes {
        let shape = Shape {
            tiles: p,
            splits: c,
            band: 1,
        };
        let mut runs: Vec<(&Kernels, Way)> = vec![
            (&plain, Way::FanTwo),
            (&plain, Way::FanWait),
            (&atomic, Way::FanWait),
        ];
        if let Some(co) = &coherent {
            runs.push((co, Way::FanWait));
        }
        let mut times = vec![Vec::new(); runs.len()];
        let mut stale = vec![0u32; runs.len()];
        for round in 0..4 {
            for (i, &(k, way)) in runs.iter().enumerate() {
                let (us, e) = rig.time(k, way, reps, shape, false)?;
                stale[i] += e;
                if round > 0 {
                    times[i].push(us);
                }
            }
        }
        anyhow::ensure!(
            stale[0] == 0,
            "the consumers' dispatch read {} stale values: across a dispatch boundary every store must be seen",
            stale[0]
        );
        let t: Vec<f64> = times.iter_mut().map(&med).collect();
        println!(
            "{:>13} {:8.2} {:8.2} {:8.2} {:>8} {:8.2} | {} / {} {} {}",
            format!("{p}×{c}"),
            t[0],
            t[1],
            t[2],
            dash(t.get(3).map(|v| format!("{v:.2}"))),
            t[0] - t[1],
            stale[0],
            stale[1],
            stale[2],
            dash(stale.get(3).map(u32::to_string)),
        );
        any_stale_plain |= stale[1] > 0;
        any_stale_atomic |= stale[2] > 0;
        any_stale_coherent |= stale.get(3).is_some_and(|&n| n > 0);
    }
    println!(
        "{}",
        match (any_stale_plain, any_stale_atomic) {
            (_, true) => "atomic loads read stale values too: neither the last blocks nor the waits work on this driver",
            (true, false) => "plain loads read stale values, atomic loads none: last blocks and waits need atomics (the *_at columns)",
            (false, false) => "no stale reads, plain or atomic, in these runs (evidence that the pattern works on this driver, not a proof)",
        }
    );
    if coherent.is_some() {
        println!(
            "{}",
            if any_stale_coherent {
                "@coherent loads read stale values: they do not replace the atomics here"
            } else {
                "@coherent loads read no stale values in these runs: compare the *_co columns with the plain and *_at ones"
            }
        );
    }
    Ok(())
}
