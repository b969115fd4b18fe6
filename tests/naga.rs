//! Every shader in shaders/ parses and validates with naga — no GPU needed: each
//! kernel's module as the GPU backend assembles it, in both reduction variants
//! (the subgroup one with naga's subgroup capability, the portable one without)
//! and both matmul walks (the tensor-core one with naga's f16 and
//! cooperative-matrix capabilities), and translates to SPIR-V as wgpu's Vulkan
//! backend would.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use vae_ood::gpu::{Assembled, Kernel, Partials, Reduce, ShaderChecks, Walk};

fn validate(label: &str, src: &str, caps: naga::valid::Capabilities) -> naga::Module {
    let module = naga::front::wgsl::parse_str(src)
        .unwrap_or_else(|e| panic!("{label}: {}", e.emit_to_string(src)));
    naga::valid::Validator::new(naga::valid::ValidationFlags::all(), caps)
        .validate(&module)
        .unwrap_or_else(|e| panic!("{label}: {}", e.emit_to_string(src)));
    module
}

/// The SPIR-V that wgpu's Vulkan backend would get for entry point `entry` of a
/// valid `module` (checked shaders): validated with `caps`, its overridable
/// constants at their defaults.
fn spirv(
    label: &str,
    module: &naga::Module,
    caps: naga::valid::Capabilities,
    entry: &str,
) -> Vec<u32> {
    vae_ood::gpu::persistent::spirv::compile_module(module, entry, &[], ShaderChecks::All, caps)
        .unwrap_or_else(|e| panic!("{label}: {e:#}"))
}

/// Every kernel's parts in every variant it is built in.
fn all_parts() -> Vec<Vec<(&'static str, &'static str)>> {
    // (the persistent step's barrier, appended to its modules: validated with them,
    // the default training step's, by the library's unit tests)
    let mut v = vec![vec![vae_ood::gpu::persistent::GRID_BARRIER]];
    for k in Kernel::ALL {
        for r in Reduce::ALL {
            for w in Walk::ALL {
                for p in Partials::ALL {
                    v.push(k.parts(r, w, p));
                }
            }
        }
    }
    v
}

#[test]
fn every_kernel_validates_in_every_variant() {
    for r in Reduce::ALL {
        for (w, p) in Walk::ALL
            .into_iter()
            .flat_map(|w| Partials::ALL.map(|p| (w, p)))
        {
            for k in Kernel::ALL {
                let src = Assembled::new(&k.parts(r, w, p));
                let label = format!("{} ({r:?}, {w:?}, {p:?})", src.label());
                let caps = r.capabilities() | w.capabilities() | p.capabilities();
                let module = validate(&label, &src.text, caps);
                assert!(
                    module.entry_points.iter().any(|e| e.name == k.entry()),
                    "{label} lacks entry point {}",
                    k.entry()
                );
                spirv(&label, &module, caps, k.entry());
            }
        }
    }
}

#[test]
fn coop_walk_needs_its_capabilities_and_is_only_in_the_matmuls() {
    for k in Kernel::ALL {
        let fma = k.parts(Reduce::Portable, Walk::Fma, Partials::Atomic);
        let coop = k.parts(Reduce::Portable, Walk::Coop16, Partials::Atomic);
        if !k.is_matmul() {
            assert_eq!(fma, coop, "{k:?}: only the matmuls have a walk");
            continue;
        }
        // the tensor-core walk's fragment shape opens the module (its `enable`
        // directives), the FMA walk follows matmul.wgsl
        assert_eq!(coop[0].0, "coop16.wgsl");
        assert!(coop.iter().any(|p| p.0 == "matmul_walk_coop.wgsl"));
        assert!(fma.iter().any(|p| p.0 == "matmul_walk.wgsl"));
        assert!(!fma.iter().any(|p| p.0.contains("coop")));
        let src = Assembled::new(&coop);
        let module = naga::front::wgsl::parse_str(&src.text).unwrap();
        naga::valid::Validator::new(
            naga::valid::ValidationFlags::all(),
            naga::valid::Capabilities::SHADER_FLOAT16,
        )
        .validate(&module)
        .expect_err("cooperative matrices must need their capability");
    }
}

/// The `@coherent` partial sums (`matmul_partial_coherent.wgsl`) are in exactly
/// the kernels whose last K share of a tile reads the others' in the same dispatch,
/// only with the FMA walk (the tensor-core walk's modules declare the Vulkan memory
/// model, where SPIR-V forbids the decoration: it keeps the atomics), need their
/// capability, and reach the SPIR-V as the Coherent decoration on one variable.
#[test]
fn coherent_partials_only_where_a_last_share_reads_the_others() {
    let last_block = [
        Kernel::MatmulBce,
        Kernel::MatmulLatent,
        Kernel::MatmulGatherLatent,
        Kernel::MatmulPairLatent,
        Kernel::MatmulGatherAdam,
    ];
    let file = |parts: &[(&str, &str)], name: &str| parts.iter().any(|p| p.0 == name);
    for k in Kernel::ALL {
        for w in Walk::ALL {
            let atomic = k.parts(Reduce::Portable, w, Partials::Atomic);
            let coherent = k.parts(Reduce::Portable, w, Partials::Coherent);
            if !last_block.contains(&k) || w != Walk::Fma {
                assert_eq!(
                    atomic, coherent,
                    "{k:?} ({w:?}) reads no partial sums @coherent"
                );
                continue;
            }
            assert!(file(&atomic, "matmul_partial_atomic.wgsl"), "{k:?}");
            assert!(file(&coherent, "matmul_partial_coherent.wgsl"), "{k:?}");
            assert!(!file(&coherent, "matmul_partial_atomic.wgsl"), "{k:?}");
            let src = Assembled::new(&coherent);
            let module = naga::front::wgsl::parse_str(&src.text).unwrap();
            naga::valid::Validator::new(
                naga::valid::ValidationFlags::all(),
                naga::valid::Capabilities::empty(),
            )
            .validate(&module)
            .expect_err("@coherent must need its capability");
            let words = spirv(
                &format!("{k:?}"),
                &module,
                Partials::Coherent.capabilities(),
                k.entry(),
            );
            assert_eq!(
                coherent_decorations(&words),
                1,
                "{k:?}: the partial sums alone"
            );
        }
    }
}

/// Why `@coherent` partial sums go only with the FMA walk, and why they are
/// possible on a device with tensor cores at all: naga declares SPIR-V's Vulkan
/// memory model (in which the Coherent decoration is not allowed) in exactly the
/// entry points that use cooperative-matrix types — the matmul kernels that walk
/// K on the tensor cores — and GLSL450's in every other, whatever the device
/// enables (wgpu turns on its `vulkanMemoryModel` feature with the tensor cores).
#[test]
fn only_tensor_core_modules_declare_the_vulkan_memory_model() {
    const GLSL450: u32 = 1;
    const VULKAN: u32 = 3;
    let memory_model =
        |words: &[u32]| vae_ood::gpu::persistent::spirv::memory_model(words).unwrap();
    for k in Kernel::ALL {
        for w in [Walk::Fma, Walk::Coop16] {
            let src = Assembled::new(&k.parts(Reduce::Portable, w, Partials::Atomic));
            let caps = w.capabilities();
            let module = validate(&src.label(), &src.text, caps);
            let model = memory_model(&spirv(&src.label(), &module, caps, k.entry()));
            // (matmul_reduce shares matmul.wgsl's module but walks no K: the
            // SPIR-V of its entry point has no cooperative matrices)
            let want = if k.is_matmul() && k != Kernel::MatmulReduce && w != Walk::Fma {
                VULKAN
            } else {
                GLSL450
            };
            assert_eq!(model, want, "{k:?} ({w:?})");
        }
    }
}

#[test]
fn subgroup_variant_needs_the_subgroup_capability() {
    // what makes choosing the variant at pipeline-build time necessary: without
    // Features::SUBGROUP (naga's SUBGROUP capability) the subgroup module is rejected
    for k in Kernel::ALL.into_iter().filter(|k| k.reduces()) {
        let src = Assembled::new(&k.parts(Reduce::Subgroup, Walk::Fma, Partials::Atomic));
        let module = naga::front::wgsl::parse_str(&src.text).unwrap();
        let e = naga::valid::Validator::new(
            naga::valid::ValidationFlags::all(),
            naga::valid::Capabilities::empty(),
        )
        .validate(&module)
        .expect_err("subgroup builtins must need the capability");
        // and the error is located in the helper file, not the kernel's
        let line = e.location(&src.text).expect("located").line_number as usize;
        assert_eq!(src.locate(line).0, "reduce_subgroup.wgsl", "{k:?}: {e:?}");
    }
    // why reduce_subgroup.wgsl has no `enable subgroups;`: naga 30 rejects it
    assert!(naga::front::wgsl::parse_str("enable subgroups;\n").is_err());
}

#[test]
fn every_wgsl_file_is_used_and_every_kernel_file_is_there() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("shaders");
    let mut on_disk = BTreeSet::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().and_then(|e| e.to_str()) == Some("wgsl") {
            let name = path.file_name().unwrap().to_str().unwrap().to_string();
            // the embedded sources are these very files
            let text = std::fs::read_to_string(&path).unwrap();
            let embedded = all_parts()
                .into_iter()
                .flatten()
                .find(|p| p.0 == name)
                .unwrap_or_else(|| panic!("shaders/{name} is used by no kernel"));
            assert_eq!(embedded.1, text, "{name}: embedded source differs");
            on_disk.insert(name);
        }
    }
    let used: BTreeSet<String> = all_parts()
        .into_iter()
        .flatten()
        .map(|p| p.0.to_string())
        .collect();
    assert_eq!(on_disk, used);
}

#[test]
fn assembled_lines_map_back_to_their_files() {
    let a = Assembled::new(&[("a.wgsl", "l1\nl2\n"), ("b.wgsl", "m1\nm2\nm3")]);
    assert_eq!(a.text, "l1\nl2\nm1\nm2\nm3\n");
    assert_eq!(a.label(), "a.wgsl + b.wgsl");
    assert_eq!(a.locate(1), ("a.wgsl", 1));
    assert_eq!(a.locate(2), ("a.wgsl", 2));
    assert_eq!(a.locate(3), ("b.wgsl", 1));
    assert_eq!(a.locate(5), ("b.wgsl", 3));
}

/// No shader sets a struct member's offset with `@size` or `@align`: naga's GLSL
/// output ignores them (gfx-rs/wgpu#4374), which is how two uniform slots were
/// read at the wrong offsets on wgpu's OpenGL backend (README, "Choosing a
/// backend"). Padding is spelled out as fields instead, which every backend lays
/// out alike.
#[test]
fn no_shader_relies_on_explicit_member_offsets() {
    // every file in shaders/, as embedded (the test above checks they are the same)
    let files: BTreeMap<&str, &str> = all_parts().into_iter().flatten().collect();
    for (name, text) in &files {
        for (i, line) in text.lines().enumerate() {
            let code = line.split("//").next().unwrap_or("");
            assert!(
                !code.contains("@size(") && !code.contains("@align("),
                "shaders/{name}:{}: {line}",
                i + 1
            );
        }
    }
    assert!(files.len() > 20, "only {} shaders", files.len());
}

/// The premise of the `@coherent` columns of `examples/grid_sync.rs` and
/// `examples/last_block.rs`: naga 30 turns a storage buffer's `@coherent` into
/// SPIR-V's `Coherent` decoration (what GLSL's `coherent` buffers give, loads that
/// see the stores a barrier made visible), and only with the capability that
/// wgpu's `Features::MEMORY_DECORATION_COHERENT` grants. Without it the probes
/// would time plain loads under another name.
#[test]
fn coherent_storage_buffers_become_spirv_coherent() {
    let src = |attr: &str| {
        r#"ATTR @group(0) @binding(0) var<storage, read_write> parts: array<vec4<f32>>;
@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) id: vec3<u32>) {
    parts[id.x] = parts[id.x + 64u] * 2.0;
}
"#
        .replace("ATTR", attr)
    };
    // how many ids the SPIR-V decorates Coherent (OpDecorate %id Coherent: 3 words)
    let coherent_ids = |attr: &str| -> usize {
        let module = naga::front::wgsl::parse_str(&src(attr)).unwrap();
        let caps = naga::valid::Capabilities::MEMORY_DECORATION_COHERENT;
        coherent_decorations(&spirv(attr, &module, caps, "main"))
    };
    assert_eq!(coherent_ids("@coherent"), 1);
    assert_eq!(coherent_ids(""), 0);
    // and the attribute needs the capability
    let module = naga::front::wgsl::parse_str(&src("@coherent")).unwrap();
    naga::valid::Validator::new(
        naga::valid::ValidationFlags::all(),
        naga::valid::Capabilities::empty(),
    )
    .validate(&module)
    .expect_err("@coherent must need its capability");
}

/// How many ids a SPIR-V module decorates Coherent (`OpDecorate %id Coherent`: 3
/// words).
fn coherent_decorations(words: &[u32]) -> usize {
    const DECORATE: u32 = 71; // OpDecorate
    const COHERENT: u32 = 23; // Decoration Coherent
    instructions(words)
        .filter(|(op, w)| *op == DECORATE && w.len() == 3 && w[2] == COHERENT)
        .count()
}

/// A SPIR-V module's instructions after its 5-word header: (opcode, its words,
/// the first holding the word count and opcode).
fn instructions(words: &[u32]) -> impl Iterator<Item = (u32, &[u32])> {
    let mut at = 5;
    std::iter::from_fn(move || {
        let first = *words.get(at)?;
        let count = (first >> 16) as usize;
        assert!(count > 0, "malformed SPIR-V at word {at}");
        let inst = &words[at..at + count];
        at += count;
        Some((first & 0xffff, inst))
    })
}
