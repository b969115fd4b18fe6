//! The persistent step (opt-in, `VAE_OOD_GPU_PERSISTENT=G`): a run of consecutive
//! dispatches — a training step's seven by default — recorded as **one** dispatch
//! of G workgroups, whose phases are the dispatches' kernels, unchanged, separated
//! by grid barriers instead of dispatch boundaries. On an NVIDIA H200 a dispatch
//! boundary costs ~4 µs more than a grid barrier over `@coherent` buffers at 416
//! workgroups (`examples/persistent_chain.rs`, 2026-11-27: 49.26 against 53.41 µs
//! per product), and a step has six boundaries inside it.
//!
//! The module is built from the kernels' own WGSL, not from rewritten copies
//! ([`chain_module`]). Each phase's module (`Kernel::parts`, as its own pipeline
//! would be built) is parsed into top-level declarations (`persistent/wgsl.rs`),
//! and:
//!
//! - every name it declares gets the prefix `ph{i}_` (phase i), except the
//!   declarations that are the same text in every phase that has them and refer
//!   only to such declarations (structs, constants, pipeline constants with the
//!   same value, workgroup memory): those appear once, shared. Workgroup memory
//!   is shared that way — the phases run one after another, a workgroup barrier
//!   after each workgroup's turn — so the module needs the most one kernel needs,
//!   not their sum;
//! - its storage buffers become one variable per buffer (and type) of the
//!   chain, `buf{n}` at binding n of group 0 ([`resources`]): phases that bind
//!   the same buffer share the variable, as naga refuses two variables at one
//!   binding and lavapipe allows 32 storage buffers per stage where the step's
//!   kernels bind 64. Each is declared `read_write` (a buffer one phase writes is
//!   bound by another too, and wgpu forbids read-only and writable bindings of a
//!   buffer in one dispatch), and `@coherent` where a phase reads it after an
//!   earlier phase wrote it ([`needs_coherent`]): after a grid barrier only
//!   coherent loads are sure to see another workgroup's stores, as
//!   `examples/persistent_chain.rs` measured on an H200. Its uniform moves to
//!   group 1, binding i (a dynamic offset per phase: the op's slot);
//! - its entry points become plain functions (builtins as arguments).
//!
//! The generated entry point (`persistent_step`) walks the phases: workgroup w of
//! G runs phase i's workgroups w, w + G, … (their ids, `num_workgroups` and
//! `global_invocation_id` as the dispatch would have given them), then waits at
//! `grid_barrier` (`shaders/grid_barrier.wgsl`) until all G have finished the
//! phase. Each workgroup of a phase computes what it computed in its own dispatch,
//! in the same order: the same bits as the dispatches, whatever G (tested on
//! Mesa 26.1's lavapipe with G = 1 and G = 2, two workgroups it runs at once on
//! two cores: `tools/coop-lavapipe.sh`). Not built on Mesa 22's lavapipe, whose
//! pipeline compiler writes out of bounds of the heap on this module
//! (`context::persistent_refusal`).
//!
//! G must not exceed the workgroups the GPU runs at once, or the first barrier
//! waits for workgroups that cannot start. The wait is bounded: a workgroup that
//! waits too long (2²² polls) marks the run failed in the status word, every
//! later barrier stops waiting, and the backend turns the mark into an error at
//! the next read (`GpuBackend::collect`). Needs workgroups of 256 threads in
//! every phase (the latent kernels are built with 256 then).
//!
//! It takes the FMA walk unless `VAE_OOD_GPU_COOP=1` asks for the tensor cores.
//! Their modules are under the Vulkan memory model (naga declares it for any entry
//! point using cooperative matrices), where SPIR-V forbids `@coherent`, and naga's
//! loads and barriers carry none of the availability and visibility that model
//! asks for instead. So there the module goes through naga to SPIR-V, and
//! [`spirv::make_visible`] gives the loads and stores of the buffers the FMA walk
//! would declare coherent, and the barriers over storage memory, what glslang
//! gives a `coherent` buffer under that model; the driver gets those words as
//! they are (`Features::PASSTHROUGH_SHADERS`). `VAE_OOD_GPU_PERSISTENT_PLAIN=1`
//! builds it from the WGSL instead (plain loads: whether they see the stores is
//! up to the driver). Both give the dispatches' bits on lavapipe, which has no
//! caches: that proves the modules; the visibility takes a GPU
//! (`bench/device-check.sh`, `PERSIST=1`, compares each with its dispatches).

use super::context::Kernel;
use anyhow::{bail, Context, Result};
use wgsl::{Decl, DeclKind, Parsed, Tok};

pub mod spirv;
mod wgsl;
use std::collections::{BTreeMap, BTreeSet, HashMap};

/// The resources of a chain whose phase i binds `res[i]` (in its kernel's
/// `bindings()` order): each distinct one once, in order of first use, and which
/// of them each phase's binding b is ((phase, b) → index), for [`chain_module`]'s
/// `resource`.
pub(super) fn resources<R: PartialEq + Copy>(
    phases: &[Phase],
    res: &[Vec<R>],
) -> (Vec<R>, HashMap<(usize, u32), usize>) {
    let mut distinct: Vec<R> = Vec::new();
    let mut map = HashMap::new();
    for (i, (p, r)) in phases.iter().zip(res).enumerate() {
        for (&(b, _), &r) in p.kernel.bindings().iter().zip(r) {
            let at = match distinct.iter().position(|&d| d == r) {
                Some(at) => at,
                None => {
                    distinct.push(r);
                    distinct.len() - 1
                }
            };
            map.insert((i, b), at);
        }
    }
    (distinct, map)
}

/// Which of a chain's resources ([`resources`]' indices) need `@coherent`: those a
/// phase binds writable and a later phase binds at all. A later phase may run on
/// another SM than the stores it reads, and only coherent loads are sure to see
/// them after the grid barrier; a buffer only read (the parameters until the last
/// phase's Adam, the image store) or only read before it is written keeps
/// cacheable loads — across the dispatch boundary after it, the driver makes
/// every store visible, as between any two dispatches.
pub(super) fn needs_coherent(
    phases: &[Phase],
    resource: &HashMap<(usize, u32), usize>,
    resources: usize,
) -> Vec<bool> {
    let mut written_by = vec![usize::MAX; resources];
    let mut need = vec![false; resources];
    for (i, p) in phases.iter().enumerate() {
        for &(b, read_only) in p.kernel.bindings() {
            let r = resource[&(i, b)];
            if written_by[r] < i {
                need[r] = true;
            }
            if !read_only {
                written_by[r] = written_by[r].min(i);
            }
        }
    }
    need
}

/// Where bindings no entry point uses go: phase i's binding b at
/// `UNUSED_BINDINGS + 64 i + b` (not in the layout, which only needs those used).
const UNUSED_BINDINGS: u32 = 1000;

/// Threads per workgroup of every phase (and of the persistent entry point).
pub const THREADS: u32 = 256;

/// The grid barrier and its buffers (group 2): (file name, WGSL source), appended
/// to every persistent module.
pub const GRID_BARRIER: (&str, &str) = (
    "grid_barrier.wgsl",
    include_str!("../../shaders/grid_barrier.wgsl"),
);

/// One phase of a chain: a dispatch's kernel and workgroups.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Phase {
    pub kernel: Kernel,
    pub groups: (u32, u32, u32),
}

/// A chain's module: WGSL text, its pipeline-overridable constants and its
/// storage bindings (its entry point is [`ENTRY`]).
#[derive(Debug)]
pub struct ChainModule {
    pub text: String,
    pub constants: Vec<(String, f64)>,
    /// group 0's bindings 0, 1, …: the resource each is (`resource`'s ids)
    pub bindings: Vec<usize>,
}

/// The persistent module's entry point.
pub const ENTRY: &str = "persistent_step";

/// A builtin an entry point takes, by name, and how the persistent entry point
/// gives it to a phase.
fn builtin_value(name: &str, dims: [u32; 3], groups: (u32, u32, u32)) -> Result<String> {
    let lid = format!(
        "vec3<u32>(pli % {x}u, (pli / {x}u) % {y}u, pli / {xy}u)",
        x = dims[0],
        y = dims[1],
        xy = dims[0] * dims[1]
    );
    Ok(match name {
        "workgroup_id" => "w".to_string(),
        "local_invocation_index" => "pli".to_string(),
        "local_invocation_id" => lid,
        "global_invocation_id" => format!(
            "w * vec3<u32>({}u, {}u, {}u) + {lid}",
            dims[0], dims[1], dims[2]
        ),
        "num_workgroups" => format!("vec3<u32>({}u, {}u, {}u)", groups.0, groups.1, groups.2),
        "subgroup_invocation_id" => "psg_lane".to_string(),
        "subgroup_size" => "psg_size".to_string(),
        "subgroup_id" => "psg_id".to_string(),
        "num_subgroups" => "psg_count".to_string(),
        other => bail!("builtin {other} is not passed to a persistent phase"),
    })
}

/// A phase's entry point: its function's name (renamed), the builtins of its
/// arguments, its workgroup size.
struct EntryInfo {
    name: String,
    builtins: Vec<String>,
    dims: [u32; 3],
}

/// The persistent module for `phases`: `parts(k)` gives kernel k's module files
/// (as its own pipeline is built from them), `constants(k)` its pipeline-overridable
/// constants, `resource(i, b)` which buffer phase i's storage binding b (its own
/// number) is (None: one its entry point does not use), `coherent(r)` whether
/// buffer r's variables are to be declared `@coherent` ([`needs_coherent`]). Errors where a kernel cannot be a phase (a
/// builtin it takes is not passed, its workgroup is not [`THREADS`] threads, two
/// phases' pipeline constants disagree on a shared name…), so that the caller can
/// run the dispatches as they are.
pub fn chain_module(
    phases: &[Phase],
    parts: &dyn Fn(Kernel) -> Vec<(&'static str, &'static str)>,
    constants: &dyn Fn(Kernel) -> Vec<(&'static str, f64)>,
    resource: &dyn Fn(usize, u32) -> Option<usize>,
    coherent: &dyn Fn(usize) -> bool,
) -> Result<ChainModule> {
    let sources: Vec<String> = phases
        .iter()
        .map(|p| super::context::Assembled::new(&parts(p.kernel)).text)
        .collect();
    let parsed: Vec<Parsed> = sources
        .iter()
        .zip(phases)
        .map(|(s, p)| Parsed::parse(s).with_context(|| format!("parsing {:?}", p.kernel)))
        .collect::<Result<_>>()?;
    let consts: Vec<HashMap<&str, f64>> = phases
        .iter()
        .map(|p| constants(p.kernel).into_iter().collect())
        .collect();
    // the names the module gives phases' declarations must not be taken: a
    // kernel's local named like a merged buffer (`buf3`) or a renamed declaration
    // (`ph0_tile`) would hide it in the kernel's code
    for (p, phase) in parsed.iter().zip(phases) {
        for t in 0..p.toks.len() {
            let id = p.text(t);
            let digits = |rest: &str| !rest.is_empty() && rest.bytes().all(|c| c.is_ascii_digit());
            let made = id.strip_prefix("buf").is_some_and(digits)
                || id
                    .strip_prefix("ph")
                    .and_then(|r| r.split_once('_'))
                    .is_some_and(|(n, _)| digits(n));
            if p.toks[t].0 == Tok::Ident && made {
                bail!(
                    "{:?}: its WGSL uses `{id}`, a name the persistent module makes",
                    phase.kernel
                );
            }
        }
    }

    // which names are shared: declared as the same text in every phase that has
    // them (pipeline constants with the same value), of a kind that can be, and
    // referring only to shared names
    let names: Vec<BTreeSet<String>> = parsed
        .iter()
        .map(|p| {
            p.decls
                .iter()
                .map(|d| d.name.clone())
                .filter(|n| !n.is_empty())
                .collect()
        })
        .collect();
    let mut forms: BTreeMap<String, Option<(String, Option<u64>)>> = BTreeMap::new();
    for (i, p) in parsed.iter().enumerate() {
        for d in &p.decls {
            if d.name.is_empty() {
                continue;
            }
            let sharable = matches!(
                d.kind,
                DeclKind::Struct
                    | DeclKind::Const
                    | DeclKind::Override
                    | DeclKind::Alias
                    | DeclKind::Workgroup
            );
            let form = sharable.then(|| {
                let value = consts[i].get(d.name.as_str()).map(|v| v.to_bits());
                (p.normal(d), value)
            });
            forms
                .entry(d.name.clone())
                .and_modify(|f| {
                    if f.as_ref() != form.as_ref() {
                        *f = None;
                    }
                })
                .or_insert(form);
        }
    }
    let mut shared: BTreeSet<String> = forms
        .iter()
        .filter(|(_, f)| f.is_some())
        .map(|(n, _)| n.clone())
        .collect();
    loop {
        let mut drop = Vec::new();
        for (i, p) in parsed.iter().enumerate() {
            for d in p.decls.iter().filter(|d| shared.contains(&d.name)) {
                if p.references(d, &names[i])
                    .iter()
                    .any(|r| !shared.contains(r))
                {
                    drop.push(d.name.clone());
                }
            }
        }
        if drop.is_empty() {
            break;
        }
        for n in drop {
            shared.remove(&n);
        }
    }

    // the storage buffers: one variable per resource and type, `buf{n}` at
    // binding n, for every phase that binds the resource (naga refuses two
    // variables at one binding); a binding the entry point does not use keeps a
    // variable of its own at a number of its own
    // (nor may a shared declaration, declared once unrenamed, have the name of
    // the barrier's or the entry point's)
    if let Some(n) = [
        "grid",
        "grid_status",
        "grid_mode",
        "grid_barrier",
        "GRID_SPINS",
        ENTRY,
    ]
    .iter()
    .find(|n| shared.contains(**n))
    {
        bail!("a kernel declares `{n}`, a name of the persistent module's own");
    }
    let mut slots: Vec<(usize, String)> = Vec::new();
    let mut slot_of: HashMap<(usize, String), u32> = HashMap::new();
    let mut numbers: HashMap<(usize, String), u32> = HashMap::new();
    for (i, p) in parsed.iter().enumerate() {
        for d in p.decls.iter().filter(|d| d.kind == DeclKind::Binding) {
            let (group, b) = p.binding_attr(d)?;
            if group != 0 {
                numbers.insert((i, d.name.clone()), i as u32);
                continue;
            }
            match resource(i, b) {
                Some(r) => {
                    let key = (r, p.type_text(d));
                    let n = match slots.iter().position(|s| *s == key) {
                        Some(n) => n,
                        None => {
                            slots.push(key);
                            slots.len() - 1
                        }
                    } as u32;
                    slot_of.insert((i, d.name.clone()), n);
                    numbers.insert((i, d.name.clone()), n);
                }
                None => {
                    numbers.insert((i, d.name.clone()), UNUSED_BINDINGS + i as u32 * 64 + b);
                }
            }
        }
    }

    let mut directives = BTreeSet::new();
    let mut emitted = BTreeSet::new();
    let mut emitted_slots = BTreeSet::new();
    let mut body = String::new();
    let mut entries = Vec::new();
    let mut out_constants: BTreeMap<String, f64> = BTreeMap::new();
    for (i, (p, phase)) in parsed.iter().zip(phases).enumerate() {
        let prefix = format!("ph{i}_");
        let rename = |n: &str| -> String {
            if let Some(slot) = slot_of.get(&(i, n.to_string())) {
                format!("buf{slot}")
            } else if names[i].contains(n) && !shared.contains(n) {
                format!("{prefix}{n}")
            } else {
                n.to_string()
            }
        };
        for (name, value) in &consts[i] {
            if names[i].contains(*name) {
                out_constants.insert(rename(name), *value);
            }
        }
        let mut entry = None;
        for d in &p.decls {
            if d.kind == DeclKind::Directive {
                directives.insert(p.normal(d));
                continue;
            }
            if shared.contains(&d.name) && !emitted.insert(d.name.clone()) {
                continue;
            }
            if let Some(&slot) = slot_of.get(&(i, d.name.clone())) {
                if !emitted_slots.insert(slot) {
                    continue;
                }
            }
            let number = numbers.get(&(i, d.name.clone())).copied();
            let slot = slot_of.get(&(i, d.name.clone()));
            let coherent = slot.is_some_and(|&n| coherent(slots[n as usize].0));
            let selected = d.entry && d.name == phase.kernel.entry();
            let (text, info) = emit(p, d, &rename, number, coherent, &consts[i], selected)
                .with_context(|| format!("{:?}, `{}`", phase.kernel, d.name))?;
            body.push_str(&text);
            if selected {
                entry = info;
            }
        }
        body.push('\n');
        let e = entry.with_context(|| {
            format!(
                "{:?}: entry point {} not found",
                phase.kernel,
                phase.kernel.entry()
            )
        })?;
        // every argument a builtin (not a struct of them, as the reductions' are)
        let module = naga::front::wgsl::parse_str(&sources[i])
            .map_err(|err| anyhow::anyhow!("{:?}: {}", phase.kernel, err.message()))?;
        let ep = module
            .entry_points
            .iter()
            .find(|ep| ep.name == phase.kernel.entry())
            .context("entry point")?;
        let builtins = ep
            .function
            .arguments
            .iter()
            .filter(|a| matches!(a.binding, Some(naga::Binding::BuiltIn(_))))
            .count();
        if builtins != ep.function.arguments.len() || builtins != e.builtins.len() {
            bail!(
                "{:?}: its entry point takes more than builtins",
                phase.kernel
            );
        }
        if e.dims.iter().product::<u32>() != THREADS {
            bail!(
                "{:?}: workgroups of {:?} threads, not {THREADS}",
                phase.kernel,
                e.dims
            );
        }
        entries.push(e);
    }

    // the entry point
    let mut call = String::new();
    let mut subgroups = false;
    for (i, (e, phase)) in entries.iter().zip(phases).enumerate() {
        let (gx, gy, gz) = phase.groups;
        let args = e
            .builtins
            .iter()
            .map(|b| builtin_value(b, e.dims, phase.groups))
            .collect::<Result<Vec<_>>>()?;
        subgroups |= args.iter().any(|a| a.starts_with("psg_"));
        call.push_str(&format!(
            "    // phase {i}: {:?}, ({gx}, {gy}, {gz}) workgroups\n    \
             for (var v = pfirst; v < {total}u; v += pn.x) {{\n        \
             let w = vec3<u32>(v % {gx}u, (v / {gx}u) % {gy}u, v / {gxy}u);\n        \
             {name}({args});\n        \
             workgroupBarrier();\n    }}\n",
            phase.kernel,
            total = gx * gy * gz,
            gxy = gx * gy,
            name = e.name,
            args = args.join(", ")
        ));
        if i + 1 < phases.len() {
            call.push_str(&format!("    grid_barrier(pli, pn.x, {i}u);\n"));
        }
    }
    let sg = if subgroups {
        ", @builtin(subgroup_invocation_id) psg_lane: u32, @builtin(subgroup_size) psg_size: u32, \
         @builtin(subgroup_id) psg_id: u32, @builtin(num_subgroups) psg_count: u32"
    } else {
        ""
    };
    let mut text = String::new();
    for d in &directives {
        text.push_str(d);
        text.push('\n');
    }
    text.push_str(&body);
    text.push_str(GRID_BARRIER.1);
    text.push_str(&format!(
        "\n// the phases, a grid barrier between them (src/gpu/persistent.rs)\n\
         @compute @workgroup_size({THREADS})\n\
         fn {ENTRY}(@builtin(workgroup_id) pwg: vec3<u32>, @builtin(num_workgroups) pn: vec3<u32>, \
         @builtin(local_invocation_index) pli: u32{sg}) {{\n    \
         // (a dry run, the probe of how many run at once: no phase's work)\n    \
         let pfirst = select(pwg.x, 0xffffffffu, grid_mode.x != 0u);\n{call}}}\n"
    ));
    Ok(ChainModule {
        text,
        constants: out_constants.into_iter().collect(),
        bindings: slots.into_iter().map(|s| s.0).collect(),
    })
}

/// Declaration `d` of phase `i`'s module as it goes into the chain module:
/// renamed, its binding moved, an entry point made a function (with what its
/// arguments are).
fn emit(
    p: &Parsed,
    d: &Decl,
    rename: &dyn Fn(&str) -> String,
    number: Option<u32>,
    coherent: bool,
    consts: &HashMap<&str, f64>,
    selected: bool,
) -> Result<(String, Option<EntryInfo>)> {
    let mut out = String::new();
    let mut info = None;
    let mut t = d.start;
    while t < d.end {
        let s = p.text(t);
        if p.toks[t].0 == Tok::Trivia {
            out.push_str(s);
            t += 1;
            continue;
        }
        if s == "@" {
            let name_t = p.next(t + 1).context("attribute")?;
            let name = p.text(name_t);
            let after = p.next(name_t + 1).context("attribute")?;
            let (args_end, args) = if p.text(after) == "(" {
                let close = p.close(after)?;
                let args: Vec<&str> = (after + 1..close)
                    .filter(|&u| p.toks[u].0 != Tok::Trivia && p.text(u) != ",")
                    .map(|u| p.text(u))
                    .collect();
                (close + 1, args)
            } else {
                (name_t + 1, Vec::new())
            };
            let value = |a: &str| -> Result<u32> {
                let lit = a.trim_end_matches(['u', 'i']);
                match lit.parse::<u32>() {
                    Ok(v) => Ok(v),
                    Err(_) => consts
                        .get(a)
                        .map(|v| *v as u32)
                        .with_context(|| format!("`{a}` is not a literal or a pipeline constant")),
                }
            };
            match (name, d.entry) {
                ("compute", true) => {}
                ("workgroup_size", true) => {
                    if selected {
                        let mut dims = [1u32; 3];
                        for (k, a) in args.iter().enumerate() {
                            dims[k] = value(a)?;
                        }
                        info = Some(EntryInfo {
                            name: rename(&d.name),
                            builtins: Vec::new(),
                            dims,
                        });
                    }
                }
                ("builtin", true) => {
                    if let Some(e) = info.as_mut() {
                        e.builtins.push(args[0].to_string());
                    }
                }
                ("group", _) => {
                    out.push_str(&p.src[p.toks[t].1..p.toks[args_end - 1].2]);
                }
                ("binding", _) => {
                    let n = number.context("a binding without its number")?;
                    out.push_str(&format!("@binding({n})"));
                    let ty_atomic = (args_end..d.end)
                        .any(|u| p.toks[u].0 == Tok::Ident && p.text(u).starts_with("atomic"));
                    let has = (d.start..d.end).any(|u| p.text(u) == "coherent");
                    let storage = (args_end..d.end).any(|u| p.text(u) == "storage");
                    if coherent && storage && !ty_atomic && !has {
                        out.push_str(" @coherent");
                    }
                    t = args_end;
                    continue;
                }
                _ => out.push_str(&p.src[p.toks[t].1..p.toks[args_end - 1].2]),
            }
            t = args_end;
            continue;
        }
        if d.kind == DeclKind::Binding
            && s == "read"
            && p.next(t + 1).map(|n| p.text(n)) == Some(">")
        {
            out.push_str("read_write");
            t += 1;
            continue;
        }
        if p.is_reference(t, d) {
            out.push_str(&rename(s));
        } else {
            out.push_str(s);
        }
        t += 1;
    }
    if selected && info.is_none() {
        bail!("an entry point without @workgroup_size");
    }
    Ok((out, info))
}

/// A chain's compute pipeline and the layouts of its groups 0 (the phases'
/// storage buffers) and 1 (every phase's uniform slot, a dynamic offset each).
pub(super) struct ChainPipeline {
    pub pipeline: wgpu::ComputePipeline,
    pub storage: wgpu::BindGroupLayout,
    pub uniforms: wgpu::BindGroupLayout,
    /// group 0's binding n: the index of its resource (as [`resources`] lists them)
    pub bindings: Vec<usize>,
    /// workgroups per dispatch: `VAE_OOD_GPU_PERSISTENT`'s G, or with `auto`
    /// what [`probe`] found for this pipeline (0 until then; 1 on a software
    /// adapter, `GpuBackend::units`)
    pub groups: u32,
    /// with `auto`, what the probe did
    pub probe: Option<Probe>,
    /// on the tensor cores, what [`spirv::make_visible`] changed in its module
    /// (None: built from the WGSL)
    pub visibility: Option<spirv::Visibility>,
}

/// The bind-group layout of group 2: this dispatch's barrier counters (a dynamic
/// offset per dispatch), the status word and the mode (`grid_mode`: a run or the
/// probe's dry run).
pub(super) fn grid_layout(device: &wgpu::Device) -> wgpu::BindGroupLayout {
    let entry = |binding, ty, dynamic| wgpu::BindGroupLayoutEntry {
        binding,
        visibility: wgpu::ShaderStages::COMPUTE,
        ty: wgpu::BindingType::Buffer {
            ty,
            has_dynamic_offset: dynamic,
            min_binding_size: wgpu::BufferSize::new(16),
        },
        count: None,
    };
    let storage = wgpu::BufferBindingType::Storage { read_only: false };
    device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
        label: Some("grid barrier"),
        entries: &[
            entry(0, storage, true),
            entry(1, storage, false),
            entry(2, wgpu::BufferBindingType::Uniform, false),
        ],
    })
}

/// Group 2's bind group: `grid`'s first 16 bytes (the first dispatch's counters;
/// a dynamic offset moves them), `status` and `mode` (16 bytes each).
pub(super) fn grid_bind_group(
    device: &wgpu::Device,
    layout: &wgpu::BindGroupLayout,
    grid: &wgpu::Buffer,
    status: &wgpu::Buffer,
    mode: &wgpu::Buffer,
) -> wgpu::BindGroup {
    let first16 = |buffer| {
        wgpu::BindingResource::Buffer(wgpu::BufferBinding {
            buffer,
            offset: 0,
            size: wgpu::BufferSize::new(16),
        })
    };
    device.create_bind_group(&wgpu::BindGroupDescriptor {
        label: Some("grid barrier"),
        layout,
        entries: &[
            wgpu::BindGroupEntry {
                binding: 0,
                resource: first16(grid),
            },
            wgpu::BindGroupEntry {
                binding: 1,
                resource: first16(status),
            },
            wgpu::BindGroupEntry {
                binding: 2,
                resource: first16(mode),
            },
        ],
    })
}

/// Polls before a wait of the probe's dry run gives up: far more than the
/// launch of every workgroup that runs at once takes (microseconds on a GPU,
/// where this many polls of an L2 atomic should take some milliseconds: each
/// ~0.3–0.7 µs, as the grid barrier's 1–2.6 µs on an H200 suggest), far fewer
/// than a run's 2²², as the probe's first dispatch gives up wherever the GPU
/// runs fewer workgroups than it asks for — at the step's sizes it asks for
/// Adam's 2,943, so on most cards.
pub const PROBE_SPINS: u32 = 1 << 14;

/// `VAE_OOD_GPU_PERSISTENT=auto`: the most workgroups of `cp`'s pipeline, up to
/// `most`, that the GPU runs at once, found by dry runs of it (its registers and
/// workgroup memory, which set how many fit on each SM; no phase does any work,
/// only the grid barriers run; `grid_barrier.wgsl`). The first dispatches `most`:
/// every one arriving at the first barrier, it is the answer; else the first wait
/// to give up counted the workgroups then running, R, and a dispatch of R must
/// then pass. Should it not (a GPU that counts otherwise), halving from R down
/// to one, which always passes. `storage` and `uniforms` are the chain's bind
/// groups (bound, not read), with `phases` dynamic offsets of 0. Waits for the
/// queue first, so that no other work of ours holds the SMs.
pub(super) fn probe(
    ctx: &super::context::GpuContext,
    cp: &ChainPipeline,
    grid_layout: &wgpu::BindGroupLayout,
    storage: &wgpu::BindGroup,
    uniforms: &wgpu::BindGroup,
    phases: usize,
    most: u32,
) -> Result<Probe> {
    use wgpu::util::DeviceExt;
    let device = &ctx.device;
    ctx.wait("the persistent step's probe")?;
    let buffer = |label, usage| {
        device.create_buffer(&wgpu::BufferDescriptor {
            label: Some(label),
            size: 16,
            usage,
            mapped_at_creation: false,
        })
    };
    let copy = wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST;
    let grid = buffer(
        "probe: grid barrier counters",
        wgpu::BufferUsages::STORAGE | copy,
    );
    let status = buffer("probe: status", wgpu::BufferUsages::STORAGE | copy);
    let staging = buffer(
        "probe: status readback",
        wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
    );
    let mode = device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
        label: Some("probe: dry run"),
        contents: bytemuck::cast_slice(&[1u32, PROBE_SPINS, 0, 0]),
        usage: wgpu::BufferUsages::UNIFORM,
    });
    let bg = grid_bind_group(device, grid_layout, &grid, &status, &mode);
    let offsets = vec![0u32; phases];
    // (gave up, the fewest arrivals a giving-up wait saw) of a dry run of g
    let run = |g: u32| -> Result<(bool, u32)> {
        let mut enc = device.create_command_encoder(&wgpu::CommandEncoderDescriptor {
            label: Some("persistent step probe"),
        });
        enc.clear_buffer(&grid, 0, None);
        // (status [0] = 0: none gave up; [2] = the most a u32 holds, for atomicMin)
        ctx.queue
            .write_buffer(&status, 0, bytemuck::cast_slice(&[0u32, 0, u32::MAX, 0]));
        {
            let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor {
                label: Some("persistent step probe"),
                timestamp_writes: None,
            });
            pass.set_pipeline(&cp.pipeline);
            pass.set_bind_group(0, storage, &[]);
            pass.set_bind_group(1, uniforms, &offsets);
            pass.set_bind_group(2, &bg, &[0]);
            pass.dispatch_workgroups(g, 1, 1);
        }
        enc.copy_buffer_to_buffer(&status, 0, &staging, 0, 16);
        ctx.queue.submit([enc.finish()]);
        let words: Vec<u32> = ctx.read_staging(&staging, 16, "persistent step probe")?;
        Ok((words[0] != 0, words[2]))
    };
    let most = most.max(1);
    let mut report = Probe {
        most,
        runs: Vec::new(),
        running: None,
        found: most,
    };
    let (gave_up, running) = run(most)?;
    report.runs.push((most, !gave_up));
    if !gave_up {
        return Ok(report);
    }
    report.running = Some(running);
    // (most is at least 2 here: one workgroup never waits)
    let mut g = running.min(most - 1).max(1);
    while g > 1 {
        let passed = !run(g)?.0;
        report.runs.push((g, passed));
        if passed {
            break;
        }
        g /= 2;
    }
    report.found = g;
    Ok(report)
}

/// What [`probe`] did for one pipeline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Probe {
    /// the most it looked for (the pipeline's largest phase's workgroups)
    pub most: u32,
    /// its dry runs in order: (workgroups, whether every wait saw the barrier
    /// complete)
    pub runs: Vec<(u32, bool)>,
    /// where the first gave up: the workgroups running when its first wait did
    pub running: Option<u32>,
    /// the most that passed (the last run's, or 1 where no run of more did)
    pub found: u32,
}

/// Build the pipeline of a chain on the context's device; `visible` says which
/// buffers a later phase reads after an earlier one wrote them
/// ([`needs_coherent`]). On the FMA walk those are declared `@coherent`; on the
/// tensor cores (the Vulkan memory model, which forbids that) the module goes to
/// the driver as SPIR-V with their loads and stores made visible and available
/// ([`spirv`]), or, with `VAE_OOD_GPU_PERSISTENT_PLAIN=1`, as wgpu compiles the
/// WGSL. Errors (the module or the device refusing it) come back as one line, for
/// the caller to run the dispatches as they are instead.
pub(super) fn build_chain(
    ctx: &super::context::GpuContext,
    grid: &wgpu::BindGroupLayout,
    phases: &[Phase],
    resource: &HashMap<(usize, u32), usize>,
    visible: &dyn Fn(usize) -> bool,
) -> Result<ChainPipeline> {
    let f = &ctx.features;
    let opts = &ctx.options;
    let fma = f.walk() == super::context::Walk::Fma;
    let m = chain_module(
        phases,
        &|k| k.parts(f.reduce(), f.walk(), f.partials()),
        &|k| k.constants(opts),
        &|i, b| resource.get(&(i, b)).copied(),
        &|r| fma && visible(r),
    )?;
    let device = &ctx.device;
    let scope = device.push_error_scope(wgpu::ErrorFilter::Validation);
    let (module, visibility) = if f.visible_spirv && !fma {
        let caps =
            f.walk().capabilities() | f.reduce().capabilities() | f.partials().capabilities();
        let words = spirv::compile(&m.text, ENTRY, &m.constants, opts.checks, caps)
            .context("the persistent step's SPIR-V")?;
        let (words, done) = spirv::make_visible(&words, &|b| {
            m.bindings.get(b as usize).is_some_and(|&r| visible(r))
        })
        .context("the persistent step's SPIR-V")?;
        let entry = [wgpu::PassthroughShaderEntryPoint {
            name: ENTRY.into(),
            workgroup_size: (THREADS, 1, 1),
        }];
        // SAFETY: the words are naga's SPIR-V of a module naga validated (with
        // the checks `opts.checks` asks for, as `create_module` gives the other
        // modules; `build_pipeline` argues why trusting them is sound), changed
        // only in memory operands and barrier semantics that the Vulkan memory
        // model defines and the device enables with cooperative matrices
        // (`spirv::make_visible`; its output passes spirv-val, tools/coop-lavapipe.sh).
        let module = unsafe {
            device.create_shader_module_passthrough(wgpu::ShaderModuleDescriptorPassthrough {
                label: Some("persistent step (SPIR-V, visible)"),
                entry_points: std::borrow::Cow::Borrowed(&entry),
                spirv: Some(std::borrow::Cow::Owned(words)),
                ..Default::default()
            })
        };
        (module, Some(done))
    } else {
        let desc = wgpu::ShaderModuleDescriptor {
            label: Some("persistent step"),
            source: wgpu::ShaderSource::Wgsl(m.text.as_str().into()),
        };
        (
            super::context::create_module(device, desc, opts.checks),
            None,
        )
    };
    let storage_entries: Vec<wgpu::BindGroupLayoutEntry> = (0..m.bindings.len() as u32)
        .map(|binding| super::context::storage_entry(binding, false))
        .collect();
    let storage = device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
        label: Some("persistent step: storage"),
        entries: &storage_entries,
    });
    let uniform_entries: Vec<wgpu::BindGroupLayoutEntry> = (0..phases.len() as u32)
        .map(super::context::op_params_entry)
        .collect();
    let uniforms = device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
        label: Some("persistent step: uniforms"),
        entries: &uniform_entries,
    });
    let pl = device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
        label: Some("persistent step"),
        bind_group_layouts: &[Some(&storage), Some(&uniforms), Some(grid)],
        immediate_size: 0,
    });
    // (the SPIR-V has its constants' values in it already)
    let constants: Vec<(&str, f64)> = match visibility {
        Some(_) => Vec::new(),
        None => m.constants.iter().map(|(n, v)| (n.as_str(), *v)).collect(),
    };
    let pipeline = device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
        label: Some("persistent step"),
        layout: Some(&pl),
        module: &module,
        entry_point: Some(ENTRY),
        compilation_options: wgpu::PipelineCompilationOptions {
            zero_initialize_workgroup_memory: opts.checks != super::context::ShaderChecks::Trusted,
            constants: &constants,
        },
        cache: None,
    });
    if let Some(e) = pollster::block_on(scope.pop()) {
        bail!("{}", super::context::one_line(&e.to_string()));
    }
    Ok(ChainPipeline {
        pipeline,
        storage,
        uniforms,
        bindings: m.bindings,
        groups: 0,
        probe: None,
        visibility,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A kernel that uses a name the module makes (a merged buffer's) is refused.
    #[test]
    fn a_kernel_using_a_made_name_is_refused() {
        let src = "@compute @workgroup_size(256)\nfn matmul(@builtin(local_invocation_index) li: u32) { var buf0 = li; }\n";
        let e = chain_module(
            &[Phase {
                kernel: Kernel::Matmul,
                groups: (1, 1, 1),
            }],
            &|_| vec![("toy.wgsl", src)],
            &|_| Vec::new(),
            &|_, _| None,
            &|_| false,
        )
        .unwrap_err();
        assert!(e.to_string().contains("`buf0`"), "{e}");
    }

    /// Two phases of one toy kernel: shared struct and workgroup memory once,
    /// bindings moved and made read-write (coherent where asked), the entry
    /// points as functions, and the module valid for naga.
    #[test]
    fn a_toy_chain_is_valid_wgsl() {
        const TOY: &str = "struct P { n: u32, _a: u32, _b: u32, _c: u32 }\n\
            @group(1) @binding(0) var<uniform> u: P;\n\
            @group(0) @binding(0) var<storage, read> a: array<f32>;\n\
            @group(0) @binding(1) var<storage, read_write> c: array<f32>;\n\
            var<workgroup> t: array<f32, 256>;\n\
            fn twice(x: f32) -> f32 { return 2.0 * x; }\n\
            @compute @workgroup_size(16, 16)\n\
            fn toy(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) li: u32) {\n\
                let i = wg.x * 256u + li;\n\
                t[li] = a[i];\n\
                workgroupBarrier();\n\
                if (i < u.n) { c[i] = twice(t[255u - li]); }\n\
            }\n";
        let phases = [
            Phase {
                kernel: Kernel::Matmul,
                groups: (3, 1, 1),
            },
            Phase {
                kernel: Kernel::Matmul,
                groups: (5, 2, 1),
            },
        ];
        // (the toy stands in for matmul.wgsl: its entry point renamed to `matmul`)
        let src: &'static str = Box::leak(TOY.replace("fn toy", "fn matmul").into_boxed_str());
        let m = chain_module(
            &phases,
            &|_| vec![("toy.wgsl", src)],
            &|_| Vec::new(),
            // (phase 0's a and phase 1's c the same buffer)
            &|i, b| Some([[0, 1], [2, 0]][i][b as usize]),
            &|r| r != 2,
        )
        .unwrap();
        let text = &m.text;
        assert_eq!(text.matches("var<workgroup> t").count(), 1, "{text}");
        assert_eq!(text.matches("struct P ").count(), 1, "{text}");
        // one variable per buffer, coherent, read-write; phase 1's c is phase 0's a
        assert_eq!(m.bindings, [0, 1, 2]);
        assert_eq!(text.matches("read_write> buf").count(), 3, "{text}");
        assert!(
            text.contains(
                "@group(0) @binding(0) @coherent var<storage, read_write> buf0: array<f32>;"
            ),
            "{text}"
        );
        assert!(text.contains("buf1[i] = ph0_twice("), "{text}");
        assert!(text.contains("buf0[i] = ph1_twice(t[255u - li])"), "{text}");
        assert!(text.contains("t[li] = buf2[i]"), "{text}");
        assert!(
            text.contains("@group(0) @binding(2) var<storage, read_write> buf2: array<f32>;"),
            "{text}"
        );
        assert!(
            text.contains("@group(1) @binding(1) var<uniform> ph1_u: P"),
            "{text}"
        );
        assert!(
            text.contains("fn ph1_matmul( wg: vec3<u32>,  li: u32)"),
            "{text}"
        );
        assert!(text.contains("v < 10u"), "{text}");
        // every phase's loop starts where a dry run (the probe's) skips it
        assert!(
            text.contains("let pfirst = select(pwg.x, 0xffffffffu, grid_mode.x != 0u);"),
            "{text}"
        );
        assert_eq!(text.matches("for (var v = pfirst; ").count(), 2, "{text}");
        let module = naga::front::wgsl::parse_str(text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        naga::valid::Validator::new(
            naga::valid::ValidationFlags::all(),
            naga::valid::Capabilities::MEMORY_DECORATION_COHERENT,
        )
        .validate(&module)
        .unwrap_or_else(|e| panic!("{e:?}\n{text}"));
    }
}

#[cfg(test)]
mod step_tests {
    use super::*;
    use crate::gpu::lower::{lower_all, Fusions};
    use crate::gpu::{GpuOptions, Partials, Reduce, ShaderChecks, Walk};

    /// The default training step's dispatches in the steady state (the second
    /// step's: fc1's product reading the batch the first step's Adam gathered) as
    /// one module, each buffer bound once: valid for naga, with each reduction
    /// variant and either way of reading partial sums.
    #[test]
    fn the_default_step_is_one_valid_module() {
        let one = crate::plan::reference_step(128).1;
        let ops: Vec<_> = [&one, &one, &one].into_iter().flatten().copied().collect();
        let (plan, _) = lower_all(&ops, Fusions::DEFAULT);
        // (the second step's ops, its Adam with the third step's gather)
        let second = one.len()..2 * one.len();
        let step: Vec<_> = plan.iter().filter(|(i, _)| second.contains(i)).collect();
        assert_eq!(step.len(), 7, "{step:?}");
        let phases: Vec<Phase> = step
            .iter()
            .map(|(_, d)| Phase {
                kernel: d.0,
                groups: d.2,
            })
            .collect();
        let res: Vec<_> = step.iter().map(|(_, d)| d.1.clone()).collect();
        let (distinct, map) = resources(&phases, &res);
        assert!(distinct.len() < 28, "{} buffers", distinct.len());
        // coherent: what a phase wrote and a later one reads; not the parameters
        // (read until the last phase's Adam writes them) nor the image store
        use crate::gpu::lower::Res;
        use crate::plan::Buf;
        let coherent = needs_coherent(&phases, &map, distinct.len());
        let is = |r: Res| coherent[distinct.iter().position(|&d| d == r).unwrap()];
        for r in [Res::F(Buf::Params), Res::Data, Res::Idx, Res::F(Buf::AdamM)] {
            assert!(!is(r), "{r:?}");
        }
        for r in [
            Res::F(Buf::H1),
            Res::F(Buf::H3),
            Res::F(Buf::Logits),
            Res::F(Buf::Grads),
            Res::F(Buf::Dh1),
            Res::Partial,
            Res::RowLoss,
        ] {
            assert!(is(r), "{r:?}");
        }
        let opts = GpuOptions {
            latent_threads: Some(THREADS),
            ..GpuOptions::default()
        };
        // on the tensor cores (no @coherent: their memory model forbids it), with
        // their default bias gradients as a column of ones
        for walk in [Walk::Coop16, Walk::Coop8] {
            let coop = GpuOptions {
                coop_use: Some(if walk == Walk::Coop16 {
                    (16, 32)
                } else {
                    (8, 8)
                }),
                ones_column: Some(true),
                ..opts
            };
            let m = chain_module(
                &phases,
                &|k| k.parts(Reduce::Subgroup, walk, Partials::Atomic),
                &|k| k.constants(&coop),
                &|i, b| map.get(&(i, b)).copied(),
                &|_| false,
            )
            .unwrap();
            assert!(m.text.starts_with("enable"), "directives first");
            let module = naga::front::wgsl::parse_str(&m.text)
                .unwrap_or_else(|e| panic!("{}", e.emit_to_string(&m.text)));
            let caps = walk.capabilities() | Reduce::Subgroup.capabilities();
            naga::valid::Validator::new(naga::valid::ValidationFlags::all(), caps)
                .validate(&module)
                .unwrap_or_else(|e| panic!("{}", e.emit_to_string(&m.text)));
            // its SPIR-V with the cross-phase accesses made visible, as built for
            // the device: every coherent buffer's loads and stores (the step reads
            // and writes each), the grid barrier's two fences
            for checks in [ShaderChecks::Trusted, ShaderChecks::All] {
                let words = spirv::compile(&m.text, ENTRY, &m.constants, checks, caps).unwrap();
                let visible = |b: u32| coherent[m.bindings[b as usize]];
                let (out, done) = spirv::make_visible(&words, &visible).unwrap();
                assert!(done.loads > 20 && done.stores > 10, "{done:?}");
                assert!(done.barriers >= 2, "{done:?}");
                let (_, none) = spirv::make_visible(&words, &|_| false).unwrap();
                assert_eq!((none.loads, none.stores), (0, 0));
                assert_eq!(none.barriers, done.barriers);
                // (for spirv-val, which tools/coop-lavapipe.sh runs on them)
                if let Ok(dir) = std::env::var("VAE_OOD_TEST_SPIRV_OUT") {
                    std::fs::create_dir_all(&dir).unwrap();
                    let name = format!("{dir}/step-{walk:?}-{checks:?}.spv");
                    std::fs::write(name, bytemuck::cast_slice(&out)).unwrap();
                }
            }
        }
        for reduce in [Reduce::Portable, Reduce::Subgroup] {
            for partials in [Partials::Atomic, Partials::Coherent] {
                let m = chain_module(
                    &phases,
                    &|k| k.parts(reduce, Walk::Fma, partials),
                    &|k| k.constants(&opts),
                    &|i, b| map.get(&(i, b)).copied(),
                    &|_| true,
                )
                .unwrap();
                let module = naga::front::wgsl::parse_str(&m.text)
                    .unwrap_or_else(|e| panic!("{}", e.emit_to_string(&m.text)));
                let caps =
                    reduce.capabilities() | naga::valid::Capabilities::MEMORY_DECORATION_COHERENT;
                naga::valid::Validator::new(naga::valid::ValidationFlags::all(), caps)
                    .validate(&module)
                    .unwrap_or_else(|e| panic!("{}", e.emit_to_string(&m.text)));
            }
        }
    }
}
