//! GPU faults become clear errors: a shader that fails validation names its file and
//! entry point; an adapter name that matches nothing is a one-line error (wgpu
//! itself would panic); the loss kernels stay finite on adversarial inputs.

mod common;

use assert_cmd::Command;
use common::*;
use vae_ood::gpu::{self, build_pipeline, GpuContext, ShaderChecks};

fn context() -> Option<GpuContext> {
    // fails without an adapter unless VAE_OOD_SKIP_GPU_TESTS=1 (see common)
    gpu_backend(
        &[0; 4],
        1,
        tiny_sizes(vae_ood::model::Dims { d: 4, h: 2, l: 1 }, 1),
    )?;
    let adapter = gpu::select_adapter().unwrap().unwrap();
    Some(GpuContext::with_options(adapter, 1 << 20, test_options()).unwrap())
}

#[test]
fn invalid_shader_is_an_error_naming_file_and_entry_point() {
    let Some(ctx) = context() else { return };
    let bad = "@compute @workgroup_size(64) fn broken() { let x: u32 = 1.5; }";
    let e = build_pipeline(
        &ctx.device,
        &ctx.uniform_layout,
        &[("broken.wgsl", bad)],
        "broken",
        &[],
        // (the default, trusted modules: naga validates them all the same)
        ShaderChecks::Trusted,
        &[],
    )
    .expect_err("invalid WGSL must fail")
    .to_string();
    assert!(
        e.starts_with("shader broken.wgsl, entry point broken:"),
        "{e}"
    );
    assert_eq!(e.lines().count(), 1, "{e}");

    let good = "@compute @workgroup_size(64) fn main() {}";
    let e = build_pipeline(
        &ctx.device,
        &ctx.uniform_layout,
        &[("good.wgsl", good)],
        "missing",
        &[],
        ShaderChecks::All,
        &[],
    )
    .expect_err("a missing entry point must fail")
    .to_string();
    assert!(e.contains("good.wgsl") && e.contains("missing"), "{e}");
    // and the device is still usable afterwards
    build_pipeline(
        &ctx.device,
        &ctx.uniform_layout,
        &[("good.wgsl", good)],
        "main",
        &[],
        ShaderChecks::All,
        &[],
    )
    .unwrap();
}

/// Kernels are assembled from files (the kernel, then a reduction helper): an error
/// names the file it is in and the line within that file.
#[test]
fn error_in_an_appended_file_names_that_file_and_line() {
    let Some(ctx) = context() else { return };
    let error_of = |kernel: &str, helper: &str| {
        build_pipeline(
            &ctx.device,
            &ctx.uniform_layout,
            &[("kernel.wgsl", kernel), ("helper.wgsl", helper)],
            "main",
            &[],
            ShaderChecks::All,
            &[],
        )
        .expect_err("invalid WGSL must fail")
        .to_string()
    };
    // in the appended helper
    let e = error_of(
        "// kernel\n@compute @workgroup_size(64)\nfn main() { let y = helper(); }\n",
        "// helper\nfn helper() -> u32 {\n    return 1.5;\n}\n",
    );
    assert!(
        e.starts_with("shader helper.wgsl, entry point main:"),
        "{e}"
    );
    assert!(
        e.contains("line 3 of helper.wgsl, module kernel.wgsl + helper.wgsl"),
        "{e}"
    );
    assert_eq!(e.lines().count(), 1, "{e}");
    // and in the kernel's own file
    let e = error_of(
        "// kernel\n@compute @workgroup_size(64)\nfn main() { let y: u32 = helper() + 0.5; }\n",
        "fn helper() -> u32 {\n    return 1u;\n}\n",
    );
    assert!(
        e.starts_with("shader kernel.wgsl, entry point main:"),
        "{e}"
    );
    assert!(e.contains("line 3 of kernel.wgsl"), "{e}");
}

#[test]
fn unknown_adapter_name_is_a_one_line_error() {
    let out = Command::cargo_bin("vae-ood")
        .unwrap()
        .env("WGPU_ADAPTER_NAME", "no-such-adapter-xyz")
        .args([
            "--device",
            "gpu",
            "--train-limit",
            "100",
            "--epochs",
            "1",
            "-q",
            "--out",
        ])
        .arg(tempfile::tempdir().unwrap().path().join("o"))
        .assert()
        .failure()
        .code(1);
    let err = String::from_utf8_lossy(&out.get_output().stderr).to_string();
    let lines: Vec<&str> = err.lines().filter(|l| l.starts_with("error")).collect();
    assert_eq!(lines.len(), 1, "{err}");
    assert!(
        lines[0].contains("WGPU_ADAPTER_NAME") && lines[0].contains("no-such-adapter-xyz"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
}
