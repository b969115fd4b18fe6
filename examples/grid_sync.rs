//! What would a persistent kernel save? A training step is 8 dependent dispatches,
//! and each dispatch boundary costs the GPU a drain and a launch (3–6 µs on an
//! H100, README "Where the time goes"). A persistent kernel would instead keep its
//! workgroups running and synchronise them itself: each workgroup adds one to a
//! counter in a storage buffer and waits until every workgroup has. This
//! experiment times both ways of separating `phases` phases of the same trivial
//! work (each workgroup writes its 256 slots, then checks its neighbour's slots
//! from the phase before):
//!
//! - `chained`: one dispatch per phase, all in one compute pass (wgpu puts a
//!   barrier between them, as between a training step's dispatches);
//! - `persistent`: one dispatch, the phases separated by a grid barrier
//!   (`storageBarrier`, which naga emits with device memory scope, then the
//!   counter);
//! - `persistent_flag` (added 2026-11-27): the same, but the waiting workgroups
//!   poll a flag that the last to arrive writes once per phase instead of the
//!   counter every arrival adds to (the column `flag`, or `flag_co` with the
//!   slots `@coherent`, below).
//!
//! It also counts the slots a workgroup read stale after the grid barrier: WGSL
//! promises neither forward progress between workgroups nor that a plain load sees
//! another workgroup's store, so both the barrier's cost and whether it works on a
//! given driver are measured, not assumed. The grid barrier deadlocks unless all
//! workgroups run at once, so it runs only on hardware GPUs (on a CPU adapter
//! such as lavapipe, only with one workgroup), with at most `max_groups`
//! workgroups (default 132, an H100's SM count; of 1, 32, 132, 264 and 528 those
//! up to `max_groups` are tried). A kernel experiment for deciding whether to
//! build persistent training kernels, not part of the training path. On an H100
//! (2026-11-26, bench/results/h100-2026-11-26.md) the barrier cost 1.3–2.2 µs
//! against 4.1–5.2 µs per dispatch boundary at up to 132 workgroups, but 99.8 %
//! of the reads after it were stale from 32 workgroups up: the idea was dropped.
//!
//! Those stale reads were plain loads served from the reader's cache (it had read
//! the same slots two phases before). wgpu 30 offers `@coherent` storage buffers on
//! every Vulkan adapter (`Features::MEMORY_DECORATION_COHERENT`, SPIR-V's
//! `Coherent` decoration: loads that see stores a barrier made visible, as
//! GLSL's `coherent` buffers), so the grid barrier runs a third time with the
//! slots declared `@coherent` (added 2026-11-27; run on an H200 that day: no
//! stale reads, 1.06–2.58 µs per phase): if its stale count is 0 at a cost near
//! the plain one, a persistent kernel is back on the table. (Not with the
//! tensor-core walk: its modules declare the Vulkan memory model, where SPIR-V
//! forbids the decoration.)
//!
//!   cargo run --release --example grid_sync [phases] [max_groups]
mod common;

use common::Count;
use vae_ood::gpu;

const SHADER: &str = r#"
struct P { phases: u32, groups: u32, _a: u32, _b: u32 }
// [0]: arrivals (phases · workgroups so far); [1]: the last phase all have
// reached (persistent_flag)
@group(0) @binding(0) var<storage, read_write> counter: array<atomic<u32>, 2>;
/*slots*/ @group(0) @binding(1) var<storage, read_write> slots: array<u32>; // (2, groups, 256)
@group(0) @binding(2) var<storage, read_write> errors: atomic<u32>;
@group(0) @binding(3) var<uniform> prm: P;
var<workgroup> phase_ws: u32;

// phase p's values go to slot set p % 2: a workgroup still checking phase p − 1
// reads the other set while its neighbour writes phase p
fn write_phase(p: u32, g: u32, li: u32) {
    slots[((p & 1u) * prm.groups + g) * 256u + li] = p * 7919u + g;
}

fn check_phase(p: u32, g: u32, li: u32) {
    let nb = (g + 1u) % prm.groups;
    if (slots[((p & 1u) * prm.groups + nb) * 256u + li] != p * 7919u + nb) {
        atomicAdd(&errors, 1u);
    }
}

// one dispatch per phase: dispatch p checks phase p − 1 and writes phase p (the
// phase number from the counter: each workgroup adds one)
@compute @workgroup_size(256)
fn chained(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    if (li == 0u) {
        phase_ws = atomicAdd(&counter[0], 1u) / prm.groups + 1u;
    }
    let p = workgroupUniformLoad(&phase_ws);
    if (p > 1u) {
        check_phase(p - 1u, wg.x, li);
    }
    write_phase(p, wg.x, li);
}

// every phase in one dispatch, a grid barrier between writing and checking
@compute @workgroup_size(256)
fn persistent(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    for (var p = 1u; p <= prm.phases; p++) {
        write_phase(p, wg.x, li);
        storageBarrier(); // this workgroup's stores made visible (device scope)
        if (li == 0u) {
            atomicAdd(&counter[0], 1u);
            let want = p * prm.groups;
            loop {
                if (atomicLoad(&counter[0]) >= want) {
                    break;
                }
            }
        }
        storageBarrier(); // the others' stores, after the counter said they are done
        check_phase(p, wg.x, li);
    }
}

// as persistent, but the waiting workgroups poll a flag that only the last to
// arrive writes (once per phase), not the counter every arrival adds to: whether
// the barrier's cost from 264 workgroups up (3.5 µs at 264, 5.8 at 528 on an
// H100) is the polls contending with the adds
@compute @workgroup_size(256)
fn persistent_flag(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    for (var p = 1u; p <= prm.phases; p++) {
        write_phase(p, wg.x, li);
        storageBarrier();
        if (li == 0u) {
            if (atomicAdd(&counter[0], 1u) + 1u == p * prm.groups) {
                atomicStore(&counter[1], p);
            } else {
                loop {
                    if (atomicLoad(&counter[1]) >= p) {
                        break;
                    }
                }
            }
        }
        storageBarrier();
        check_phase(p, wg.x, li);
    }
}
"#;

struct Rig {
    device: wgpu::Device,
    queue: wgpu::Queue,
    counter: wgpu::Buffer,
    errors: Count,
    prm: wgpu::Buffer,
}

impl Rig {
    /// Runs `phases` phases over `groups` workgroups one way; returns µs per phase
    /// and the stale reads counted.
    fn time(
        &self,
        pipeline: &wgpu::ComputePipeline,
        bind: &wgpu::BindGroup,
        chained: bool,
        phases: u32,
        groups: u32,
    ) -> anyhow::Result<(f64, u32)> {
        let words = [phases, groups, 0, 0];
        self.queue
            .write_buffer(&self.prm, 0, bytemuck::cast_slice(&words));
        let mut enc = self.device.create_command_encoder(&Default::default());
        enc.clear_buffer(&self.counter, 0, None);
        enc.clear_buffer(&self.errors.on_gpu, 0, None);
        {
            let mut pass = enc.begin_compute_pass(&Default::default());
            pass.set_pipeline(pipeline);
            pass.set_bind_group(0, bind, &[]);
            for _ in 0..if chained { phases } else { 1 } {
                pass.dispatch_workgroups(groups, 1, 1);
            }
        }
        let (took, errors) = self
            .errors
            .submit_and_read(&self.device, &self.queue, enc)?;
        let us = took.as_secs_f64() * 1e6 / phases as f64;
        Ok((us, errors))
    }
}

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let phases: u32 = args.next().map(|s| s.parse()).transpose()?.unwrap_or(2000);
    let max_groups: u32 = args.next().map(|s| s.parse()).transpose()?.unwrap_or(132);
    let adapter = gpu::select_adapter()?.ok_or_else(gpu::no_adapter_error)?;
    let info = adapter.get_info();
    let (device, queue, coherent) = common::device_with_coherent(&adapter)?;
    // the shader as it is, and with its slots `@coherent` (where the device has it)
    let module = |label: &str, slots: &str| {
        device.create_shader_module(wgpu::ShaderModuleDescriptor {
            label: Some(label),
            source: wgpu::ShaderSource::Wgsl(SHADER.replace("/*slots*/", slots).into()),
        })
    };
    let plain = module("grid_sync", "");
    let pipeline = |module: &wgpu::ShaderModule, entry: &str| {
        common::compute_pipeline(&device, None, module, entry)
    };
    // (the coherent module where the device has it, else the plain one again)
    let slotted = if coherent {
        module("grid_sync coherent", "@coherent")
    } else {
        module("grid_sync", "")
    };
    // the ways, in the table's order: (name, pipeline, one dispatch per phase)
    let mut ways = vec![
        ("dispatches", pipeline(&plain, "chained"), true),
        ("barrier", pipeline(&plain, "persistent"), false),
    ];
    if coherent {
        ways.push(("barrier_co", pipeline(&slotted, "persistent"), false));
    }
    ways.push((
        if coherent { "flag_co" } else { "flag" },
        pipeline(&slotted, "persistent_flag"),
        false,
    ));
    let counter = common::storage(&device, "counter", 8);
    let errors = Count::new(&device, "errors");
    // (1 workgroup, 32, an H100's 132 SMs, then 2 and 4 per SM: those up to max_groups)
    let groups: Vec<u32> = [1, 32, 132, 264, 528]
        .into_iter()
        .filter(|&g| g <= max_groups.max(1))
        .collect();
    let most = *groups.last().unwrap() as u64;
    let slots = common::storage(&device, "slots", 2 * most * 256 * 4);
    let prm = common::params(&device, 16);
    // (each pipeline's own layout, derived from the shader: all bind all four)
    let bind_for = |p: &wgpu::ComputePipeline| {
        common::bind_buffers(
            &device,
            "grid_sync",
            &p.get_bind_group_layout(0),
            &[&counter, &slots, &errors.on_gpu, &prm],
        )
    };
    let binds: Vec<wgpu::BindGroup> = ways.iter().map(|(_, p, _)| bind_for(p)).collect();
    let rig = Rig {
        device: device.clone(),
        queue,
        counter,
        errors,
        prm,
    };
    println!(
        "{} ({:?}, {:?}); {phases} phases of 256-thread workgroups",
        info.name, info.backend, info.device_type
    );
    println!(
        "µs per phase, medians of 3 runs after a warm-up; stale = slots read wrong after the barrier (all 4 runs); barrier: one counter polled; flag: a flag the last arrival writes; _co: slots @coherent{}",
        if coherent {
            ""
        } else {
            " (not offered by this adapter: left out)"
        }
    );
    let names: Vec<&str> = ways.iter().map(|(n, _, _)| *n).collect();
    println!(
        "{:>10} {} | stale: {}",
        "workgroups",
        names
            .iter()
            .map(|n| format!(" {n:>10}"))
            .collect::<String>(),
        names.join(", ")
    );
    let hardware = !gpu::is_software(&info);
    let med = |v: &mut Vec<f64>| {
        v.sort_by(|a, b| a.total_cmp(b));
        v.get(v.len() / 2).copied()
    };
    for g in groups {
        // warm, then three rounds each way, alternating; medians. A grid barrier
        // deadlocks unless all workgroups run at once, which a CPU adapter such as
        // lavapipe need not do: there it runs with one workgroup only (which checks
        // the kernels' logic).
        let barrier = hardware || g == 1;
        let mut t = vec![Vec::new(); ways.len()];
        let mut stale: Vec<Option<u32>> = vec![None; ways.len()];
        for round in 0..4 {
            for (i, (_, pipeline, chained)) in ways.iter().enumerate() {
                if !chained && !barrier {
                    continue;
                }
                let (us, e) = rig.time(pipeline, &binds[i], *chained, phases, g)?;
                *stale[i].get_or_insert(0) += e;
                if round > 0 {
                    t[i].push(us);
                }
            }
        }
        let dash = |v: Option<String>| v.unwrap_or_else(|| "–".to_string());
        println!(
            "{g:>10} {} | {}",
            t.iter_mut()
                .map(|v| format!(" {:>10}", dash(med(v).map(|us| format!("{us:.2}")))))
                .collect::<String>(),
            stale
                .iter()
                .map(|n| dash(n.map(|n| n.to_string())))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    if !hardware {
        println!(
            "(grid barriers run with one workgroup only on a {:?} adapter: its workgroups need not run at once)",
            info.device_type
        );
    }
    Ok(())
}
