//! The persistent step on the tensor cores, made visible: its module as SPIR-V
//! whose cross-phase accesses carry the Vulkan memory model's availability and
//! visibility operations.
//!
//! On the FMA walk a buffer that one phase writes and a later one reads is
//! declared `@coherent`: SPIR-V's Coherent decoration, which makes its loads see
//! other workgroups' stores after the grid barrier. A module using cooperative
//! matrices is under the Vulkan memory model (naga declares it), where SPIR-V
//! forbids that decoration, and naga writes its loads, stores and barriers without
//! what the model asks instead. So the tensor-core step's module goes through
//! naga to SPIR-V here, and [`make_visible`] adds, as glslang does for a `coherent`
//! buffer under that model:
//!
//! - to every load of such a buffer: `NonPrivatePointer | MakePointerVisible`
//!   at Device scope; to every store: `NonPrivatePointer | MakePointerAvailable`;
//! - to every barrier over storage memory (`storageBarrier()`, the grid barrier's
//!   fences): `MakeAvailable | MakeVisible` beside its acquire-release semantics;
//! - the `VulkanMemoryModelDeviceScope` capability, which Device scope under the
//!   model needs (naga already uses that scope for its atomics without declaring
//!   it; wgpu enables the device feature wherever it enables the model).
//!
//! Everything else is naga's output word for word; the other buffers' loads stay
//! cacheable, as on the FMA walk. The module is handed to the driver as it is
//! (`Device::create_shader_module_passthrough`). `VAE_OOD_GPU_PERSISTENT_PLAIN=1`
//! builds the step from the WGSL instead, as before this existed: whether the
//! driver makes plain loads see the stores is then up to it.

use crate::gpu::context::ShaderChecks;
use anyhow::{anyhow, bail, ensure, Result};
use std::collections::HashMap;

// opcodes
const OP_CAPABILITY: u32 = 17;
const OP_MEMORY_MODEL: u32 = 14;
const OP_TYPE_INT: u32 = 21;
const OP_TYPE_POINTER: u32 = 32;
const OP_CONSTANT: u32 = 43;
const OP_FUNCTION: u32 = 54;
const OP_FUNCTION_PARAMETER: u32 = 55;
const OP_VARIABLE: u32 = 59;
const OP_LOAD: u32 = 61;
const OP_STORE: u32 = 62;
const OP_COPY_MEMORY: u32 = 63;
const OP_COPY_MEMORY_SIZED: u32 = 64;
const OP_ACCESS_CHAIN: u32 = 65;
const OP_IN_BOUNDS_ACCESS_CHAIN: u32 = 66;
const OP_PTR_ACCESS_CHAIN: u32 = 67;
const OP_DECORATE: u32 = 71;
const OP_COPY_OBJECT: u32 = 83;
const OP_CONTROL_BARRIER: u32 = 224;
const OP_MEMORY_BARRIER: u32 = 225;
const OP_COOP_MATRIX_LOAD: u32 = 4457;
const OP_COOP_MATRIX_STORE: u32 = 4458;

const CAP_VULKAN_MEMORY_MODEL: u32 = 5345;
const CAP_VULKAN_MEMORY_MODEL_DEVICE_SCOPE: u32 = 5346;
const MEMORY_MODEL_VULKAN: u32 = 3;
const DECORATION_BINDING: u32 = 33;
const DECORATION_DESCRIPTOR_SET: u32 = 34;
const STORAGE_BUFFER: u32 = 12;
const SCOPE_DEVICE: u32 = 1;

// memory operands
const MO_VOLATILE: u32 = 0x1;
const MO_ALIGNED: u32 = 0x2;
const MO_NONTEMPORAL: u32 = 0x4;
const MO_MAKE_POINTER_AVAILABLE: u32 = 0x8;
const MO_MAKE_POINTER_VISIBLE: u32 = 0x10;
const MO_NON_PRIVATE_POINTER: u32 = 0x20;

// memory semantics
const SEM_ACQUIRE_RELEASE: u32 = 0x8;
const SEM_UNIFORM_MEMORY: u32 = 0x40;
const SEM_MAKE_AVAILABLE: u32 = 0x2000;
const SEM_MAKE_VISIBLE: u32 = 0x4000;

/// What [`make_visible`] changed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Visibility {
    /// loads of the chosen buffers, now visible at Device scope
    pub loads: usize,
    /// stores to them, now available at Device scope
    pub stores: usize,
    /// barriers over storage memory, now with availability and visibility
    pub barriers: usize,
}

/// `text` (WGSL, entry point `entry`) as the SPIR-V wgpu's Vulkan backend would
/// write for it with the pipeline constants `constants` and the runtime checks
/// `checks` (`context::create_module`'s), SPIR-V 1.5 (Vulkan 1.2, which
/// cooperative matrices need anyway).
pub fn compile(
    text: &str,
    entry: &str,
    constants: &[(String, f64)],
    checks: ShaderChecks,
    caps: naga::valid::Capabilities,
) -> Result<Vec<u32>> {
    let module = naga::front::wgsl::parse_str(text).map_err(|e| anyhow!("{}", e.message()))?;
    compile_module(&module, entry, constants, checks, caps)
}

/// [`compile`] of a parsed module.
pub fn compile_module(
    module: &naga::Module,
    entry: &str,
    constants: &[(String, f64)],
    checks: ShaderChecks,
    caps: naga::valid::Capabilities,
) -> Result<Vec<u32>> {
    use naga::back::spv;
    let info = naga::valid::Validator::new(naga::valid::ValidationFlags::all(), caps)
        .validate(module)
        .map_err(|e| anyhow!("{}", e.as_inner()))?;
    let mut values = naga::back::PipelineConstants::default();
    for (name, v) in constants {
        values.insert(name.clone(), *v);
    }
    let (module, info) = naga::back::pipeline_constants::process_overrides(
        module,
        &info,
        Some((naga::ShaderStage::Compute, entry)),
        &values,
    )
    .map_err(|e| anyhow!("{e}"))?;
    let trusted = checks == ShaderChecks::Trusted;
    let unchecked = naga::proc::BoundsCheckPolicy::Unchecked;
    let options = spv::Options {
        lang_version: (1, 5),
        flags: spv::WriterFlags::empty(),
        // bindings as declared: group n is descriptor set n, as wgpu lays them out
        fake_missing_bindings: true,
        bounds_check_policies: if trusted {
            naga::proc::BoundsCheckPolicies {
                index: unchecked,
                buffer: unchecked,
                image_load: unchecked,
                binding_array: unchecked,
            }
        } else {
            Default::default()
        },
        zero_initialize_workgroup_memory: if trusted {
            spv::ZeroInitializeWorkgroupMemoryMode::None
        } else {
            spv::ZeroInitializeWorkgroupMemoryMode::Polyfill
        },
        force_loop_bounding: checks == ShaderChecks::All,
        emit_int_div_checks: !trusted,
        ray_query_initialization_tracking: false,
        trace_ray_argument_validation: false,
        ..Default::default()
    };
    let pipeline = spv::PipelineOptions {
        shader_stage: naga::ShaderStage::Compute,
        entry_point: entry.to_string(),
    };
    Ok(spv::write_vec(&module, &info, &options, Some(&pipeline))?)
}

/// One instruction's span of words.
struct Inst {
    at: usize,
    op: u32,
    count: usize,
}

fn instructions(words: &[u32]) -> Result<Vec<Inst>> {
    ensure!(
        words.len() >= 5 && words[0] == 0x0723_0203,
        "not a SPIR-V module"
    );
    let mut v = Vec::new();
    let mut at = 5;
    while at < words.len() {
        let count = (words[at] >> 16) as usize;
        ensure!(
            count > 0 && at + count <= words.len(),
            "malformed SPIR-V at word {at}"
        );
        v.push(Inst {
            at,
            op: words[at] & 0xffff,
            count,
        });
        at += count;
    }
    Ok(v)
}

/// The memory model a SPIR-V module declares (OpMemoryModel's second operand:
/// 1 GLSL450, 3 Vulkan).
pub fn memory_model(words: &[u32]) -> Result<u32> {
    let model = instructions(words)?
        .into_iter()
        .find(|i| i.op == OP_MEMORY_MODEL)
        .ok_or_else(|| anyhow!("no OpMemoryModel"))?;
    Ok(words[model.at + 2])
}

/// The module `words` (naga's, under the Vulkan memory model) with the loads and
/// stores of the storage buffers of descriptor set 0 whose binding `visible`
/// chooses made visible and available at Device scope, and every barrier over
/// storage memory given availability and visibility (the module doc). Errors
/// where the module is not under that model, or accesses a chosen buffer in a way
/// this does not handle (copies, cooperative-matrix loads, pointers it cannot
/// trace to their variable).
pub fn make_visible(
    words: &[u32],
    visible: &dyn Fn(u32) -> bool,
) -> Result<(Vec<u32>, Visibility)> {
    ensure!(
        memory_model(words)? == MEMORY_MODEL_VULKAN,
        "the module is not under the Vulkan memory model"
    );
    let insts = instructions(words)?;
    let w = |i: &Inst, k: usize| words[i.at + k];

    // what the ids are: pointer types' storage classes, values' types, the
    // variable each pointer is into, bindings of set 0, u32 constants
    let mut pointer_class: HashMap<u32, u32> = HashMap::new();
    let mut type_of: HashMap<u32, u32> = HashMap::new();
    let mut root: HashMap<u32, u32> = HashMap::new();
    let mut set: HashMap<u32, u32> = HashMap::new();
    let mut binding: HashMap<u32, u32> = HashMap::new();
    let mut uint = None;
    let mut constant: HashMap<u32, (u32, u32)> = HashMap::new(); // id → (type, value)
    for i in &insts {
        match i.op {
            OP_TYPE_POINTER => {
                pointer_class.insert(w(i, 1), w(i, 2));
            }
            OP_TYPE_INT if w(i, 2) == 32 && w(i, 3) == 0 => uint = Some(w(i, 1)),
            OP_CONSTANT if i.count == 4 => {
                constant.insert(w(i, 2), (w(i, 1), w(i, 3)));
            }
            OP_DECORATE if i.count == 4 && w(i, 2) == DECORATION_DESCRIPTOR_SET => {
                set.insert(w(i, 1), w(i, 3));
            }
            OP_DECORATE if i.count == 4 && w(i, 2) == DECORATION_BINDING => {
                binding.insert(w(i, 1), w(i, 3));
            }
            OP_VARIABLE => {
                type_of.insert(w(i, 2), w(i, 1));
                root.insert(w(i, 2), w(i, 2));
            }
            OP_ACCESS_CHAIN | OP_IN_BOUNDS_ACCESS_CHAIN | OP_PTR_ACCESS_CHAIN | OP_COPY_OBJECT => {
                type_of.insert(w(i, 2), w(i, 1));
                if let Some(&r) = root.get(&w(i, 3)) {
                    root.insert(w(i, 2), r);
                }
            }
            OP_FUNCTION_PARAMETER => {
                type_of.insert(w(i, 2), w(i, 1));
            }
            _ => {}
        }
    }
    let uint = uint.ok_or_else(|| anyhow!("no 32-bit unsigned integer type"))?;
    // whether an access through `ptr` is to a chosen buffer (an error where the
    // pointer is into storage memory but not traced to its variable)
    let chosen = |ptr: u32| -> Result<bool> {
        let class = type_of.get(&ptr).and_then(|t| pointer_class.get(t));
        if class != Some(&STORAGE_BUFFER) {
            return Ok(false);
        }
        let var = root
            .get(&ptr)
            .ok_or_else(|| anyhow!("a storage pointer (%{ptr}) not traced to its variable"))?;
        Ok(set.get(var) == Some(&0) && binding.get(var).is_some_and(|&b| visible(b)))
    };

    let mut next_id = words[3];
    let mut fresh = || {
        next_id += 1;
        next_id - 1
    };
    // the Device scope constant: naga's own where it has one
    let mut new_constants: Vec<[u32; 4]> = Vec::new();
    let device = match constant
        .iter()
        .filter(|(_, &(t, v))| t == uint && v == SCOPE_DEVICE)
        .map(|(&id, _)| id)
        .min()
    {
        Some(id) => id,
        None => {
            let id = fresh();
            new_constants.push([(4 << 16) | OP_CONSTANT, uint, id, SCOPE_DEVICE]);
            id
        }
    };
    let mut semantics: HashMap<u32, u32> = HashMap::new(); // old constant → new

    let mut out: Vec<u32> = words[..5].to_vec();
    let mut done = Visibility::default();
    let mut model_capability = false;
    for i in &insts {
        let inst = &words[i.at..i.at + i.count];
        match i.op {
            OP_CAPABILITY if inst[1] == CAP_VULKAN_MEMORY_MODEL => {
                out.extend_from_slice(inst);
                if !insts.iter().any(|j| {
                    j.op == OP_CAPABILITY && w(j, 1) == CAP_VULKAN_MEMORY_MODEL_DEVICE_SCOPE
                }) {
                    out.extend_from_slice(&[
                        (2 << 16) | OP_CAPABILITY,
                        CAP_VULKAN_MEMORY_MODEL_DEVICE_SCOPE,
                    ]);
                }
                model_capability = true;
            }
            OP_LOAD if chosen(inst[3])? => {
                out.extend(with_operands(
                    &inst[..4],
                    &inst[4..],
                    MO_MAKE_POINTER_VISIBLE,
                    device,
                )?);
                done.loads += 1;
            }
            OP_STORE if chosen(inst[1])? => {
                out.extend(with_operands(
                    &inst[..3],
                    &inst[3..],
                    MO_MAKE_POINTER_AVAILABLE,
                    device,
                )?);
                done.stores += 1;
            }
            OP_COPY_MEMORY | OP_COPY_MEMORY_SIZED if chosen(inst[1])? || chosen(inst[2])? => {
                bail!("a memory copy of a buffer to make visible")
            }
            OP_COOP_MATRIX_LOAD if chosen(inst[3])? => {
                bail!("a cooperative-matrix load from a buffer to make visible")
            }
            OP_COOP_MATRIX_STORE if chosen(inst[1])? => {
                bail!("a cooperative-matrix store to a buffer to make visible")
            }
            OP_CONTROL_BARRIER | OP_MEMORY_BARRIER => {
                let at = inst.len() - 1;
                let (t, bits) = *constant
                    .get(&inst[at])
                    .ok_or_else(|| anyhow!("a barrier whose semantics are not a constant"))?;
                let mut patched = inst.to_vec();
                if bits & SEM_UNIFORM_MEMORY != 0 {
                    ensure!(
                        bits & SEM_ACQUIRE_RELEASE != 0,
                        "a storage barrier without acquire-release semantics"
                    );
                    let id = *semantics.entry(inst[at]).or_insert_with(|| {
                        let id = fresh();
                        new_constants.push([
                            (4 << 16) | OP_CONSTANT,
                            t,
                            id,
                            bits | SEM_MAKE_AVAILABLE | SEM_MAKE_VISIBLE,
                        ]);
                        id
                    });
                    patched[at] = id;
                    done.barriers += 1;
                }
                out.extend(patched);
            }
            _ => out.extend_from_slice(inst),
        }
    }
    ensure!(model_capability, "no VulkanMemoryModel capability");
    // the new constants after naga's globals, before the first function
    if !new_constants.is_empty() {
        let first = instruction_at(&out, OP_FUNCTION)?;
        let tail = out.split_off(first);
        for c in new_constants.drain(..) {
            out.extend_from_slice(&c);
        }
        out.extend(tail);
    }
    out[3] = next_id;
    Ok((out, done))
}

/// The word index of the first instruction `op` in `words`.
fn instruction_at(words: &[u32], op: u32) -> Result<usize> {
    let mut at = 5;
    while at < words.len() {
        if words[at] & 0xffff == op {
            return Ok(at);
        }
        at += (words[at] >> 16) as usize;
    }
    bail!("no instruction {op}")
}

/// A load's or store's words `head` (its opcode word and fixed operands) and
/// memory operands `ops` (none, or a mask and its operands), with
/// NonPrivatePointer and `make` (MakePointerVisible or MakePointerAvailable) at
/// scope `scope` added; the word count set.
fn with_operands(head: &[u32], ops: &[u32], make: u32, scope: u32) -> Result<Vec<u32>> {
    let mask = ops.first().copied().unwrap_or(0);
    ensure!(
        mask & !(MO_VOLATILE | MO_ALIGNED | MO_NONTEMPORAL) == 0,
        "memory operands {mask:#x} already carry availability or visibility"
    );
    let mut v = head.to_vec();
    v.push(mask | MO_NON_PRIVATE_POINTER | make);
    // operand order: Aligned's literal, then the availability, then the visibility scope
    if mask & MO_ALIGNED != 0 {
        ensure!(ops.len() == 2, "malformed memory operands");
        v.push(ops[1]);
    } else {
        ensure!(ops.len() <= 1, "malformed memory operands");
    }
    v.push(scope);
    v[0] = ((v.len() as u32) << 16) | (head[0] & 0xffff);
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A toy under the Vulkan memory model (a cooperative-matrix variable puts it
    /// there): buffer 0 written and read across a storage barrier, buffer 1 only
    /// read, an atomic, a workgroup barrier.
    const TOY: &str = "enable f16;\nenable wgpu_cooperative_matrix;\n\
        @group(0) @binding(0) var<storage, read_write> a: array<f32>;\n\
        @group(0) @binding(1) var<storage, read_write> b: array<f32>;\n\
        @group(0) @binding(2) var<storage, read_write> n: array<atomic<u32>, 4>;\n\
        var<workgroup> t: array<f32, 64>;\n\
        @compute @workgroup_size(64)\n\
        fn main(@builtin(local_invocation_index) li: u32) {\n\
            var m: coop_mat8x8<f32, C>;\n\
            a[li] = b[li] * 2.0;\n\
            storageBarrier();\n\
            atomicAdd(&n[0], 1u);\n\
            t[li] = a[63u - li];\n\
            workgroupBarrier();\n\
            b[li] = t[li] + a[li];\n\
        }\n";

    fn toy() -> Vec<u32> {
        let caps = naga::valid::Capabilities::SHADER_FLOAT16
            | naga::valid::Capabilities::COOPERATIVE_MATRIX;
        compile(TOY, "main", &[], ShaderChecks::Trusted, caps).unwrap()
    }

    /// (opcode, words) of every instruction.
    fn decoded(words: &[u32]) -> Vec<(u32, Vec<u32>)> {
        instructions(words)
            .unwrap()
            .iter()
            .map(|i| (i.op, words[i.at..i.at + i.count].to_vec()))
            .collect()
    }

    /// Only buffer 0's accesses change (two loads, one store), the storage barrier
    /// gains availability and visibility and the workgroup barrier does not, the
    /// capability is declared once, and every other word is naga's.
    #[test]
    fn only_the_chosen_buffer_and_storage_barriers_change() {
        let words = toy();
        let (out, done) = make_visible(&words, &|b| b == 0).unwrap();
        assert_eq!(
            done,
            Visibility {
                loads: 2,
                stores: 1,
                barriers: 1
            }
        );
        let got = decoded(&out);
        let loads: Vec<&Vec<u32>> = got
            .iter()
            .filter(|(op, _)| *op == OP_LOAD)
            .map(|(_, w)| w)
            .collect();
        let visible: Vec<&&Vec<u32>> = loads.iter().filter(|w| w.len() == 6).collect();
        assert_eq!(visible.len(), 2);
        for w in &visible {
            assert_eq!(w[4], MO_NON_PRIVATE_POINTER | MO_MAKE_POINTER_VISIBLE);
        }
        let stores: Vec<&Vec<u32>> = got
            .iter()
            .filter(|(op, _)| *op == OP_STORE)
            .map(|(_, w)| w)
            .collect();
        assert_eq!(stores.iter().filter(|w| w.len() == 5).count(), 1);
        assert!(stores
            .iter()
            .filter(|w| w.len() == 5)
            .all(|w| w[3] == MO_NON_PRIVATE_POINTER | MO_MAKE_POINTER_AVAILABLE));
        // the scope operand is a constant Device
        let constants: HashMap<u32, u32> = got
            .iter()
            .filter(|(op, w)| *op == OP_CONSTANT && w.len() == 4)
            .map(|(_, w)| (w[2], w[3]))
            .collect();
        assert_eq!(constants[&visible[0][5]], SCOPE_DEVICE);
        let barriers: Vec<u32> = got
            .iter()
            .filter(|(op, _)| *op == OP_CONTROL_BARRIER)
            .map(|(_, w)| constants[&w[3]])
            .collect();
        assert_eq!(barriers.len(), 2, "{barriers:x?}");
        for s in &barriers {
            let made = s & (SEM_MAKE_AVAILABLE | SEM_MAKE_VISIBLE);
            if s & SEM_UNIFORM_MEMORY != 0 {
                assert_eq!(made, SEM_MAKE_AVAILABLE | SEM_MAKE_VISIBLE, "{s:#x}");
            } else {
                assert_eq!(made, 0, "{s:#x}");
            }
        }
        let caps = got
            .iter()
            .filter(|(op, w)| *op == OP_CAPABILITY && w[1] == CAP_VULKAN_MEMORY_MODEL_DEVICE_SCOPE)
            .count();
        assert_eq!(caps, 1);
        // every instruction not counted above is naga's, in naga's order
        let before: Vec<(u32, Vec<u32>)> = decoded(&words)
            .into_iter()
            .filter(|(op, _)| ![OP_LOAD, OP_STORE, OP_CONTROL_BARRIER].contains(op))
            .collect();
        // (the accesses, the barriers, the capability and the constants added)
        let added = |op: u32, w: &Vec<u32>| match op {
            OP_LOAD | OP_STORE | OP_CONTROL_BARRIER => true,
            OP_CAPABILITY => w[1] == CAP_VULKAN_MEMORY_MODEL_DEVICE_SCOPE,
            OP_CONSTANT => !before.iter().any(|(_, b)| b == w),
            _ => false,
        };
        let after: Vec<(u32, Vec<u32>)> =
            got.into_iter().filter(|(op, w)| !added(*op, w)).collect();
        assert_eq!(before, after);
        // the id bound covers the new constants
        let most = decoded(&out)
            .iter()
            .filter(|(op, w)| *op == OP_CONSTANT && w.len() == 4)
            .map(|(_, w)| w[2])
            .max()
            .unwrap();
        assert!(out[3] > most);
    }

    /// Nothing chosen: only the barrier and the capability change.
    #[test]
    fn nothing_chosen_leaves_the_accesses() {
        let (_, done) = make_visible(&toy(), &|_| false).unwrap();
        assert_eq!(
            done,
            Visibility {
                loads: 0,
                stores: 0,
                barriers: 1
            }
        );
    }

    /// A module under the GLSL450 model (no cooperative matrix) is refused: its
    /// buffers take `@coherent` instead.
    #[test]
    fn a_module_outside_the_vulkan_memory_model_is_refused() {
        let src = TOY
            .replace("enable wgpu_cooperative_matrix;\n", "")
            .replace("var m: coop_mat8x8<f32, C>;\n", "");
        let words = compile(
            &src,
            "main",
            &[],
            ShaderChecks::All,
            naga::valid::Capabilities::SHADER_FLOAT16,
        )
        .unwrap();
        let e = make_visible(&words, &|_| true).unwrap_err();
        assert!(e.to_string().contains("Vulkan memory model"), "{e}");
    }

    /// Memory operands: the Aligned literal stays before the scope.
    #[test]
    fn memory_operands_keep_their_order() {
        let head = [(4 << 16) | OP_LOAD, 1, 2, 3];
        let v = with_operands(&head, &[MO_ALIGNED, 4], MO_MAKE_POINTER_VISIBLE, 9).unwrap();
        assert_eq!(
            v,
            vec![
                (7 << 16) | OP_LOAD,
                1,
                2,
                3,
                MO_ALIGNED | MO_NON_PRIVATE_POINTER | MO_MAKE_POINTER_VISIBLE,
                4,
                9
            ]
        );
        let v = with_operands(&head, &[], MO_MAKE_POINTER_VISIBLE, 9).unwrap();
        assert_eq!(v[0] >> 16, 6);
        with_operands(
            &head,
            &[MO_MAKE_POINTER_VISIBLE, 9],
            MO_MAKE_POINTER_VISIBLE,
            9,
        )
        .unwrap_err();
    }
}
