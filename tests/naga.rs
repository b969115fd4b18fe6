//! Every shader in shaders/ parses and validates with naga — no GPU needed.

use std::path::Path;

#[test]
fn every_wgsl_file_validates() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("shaders");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().and_then(|e| e.to_str()) != Some("wgsl") {
            continue;
        }
        let src = std::fs::read_to_string(&path).unwrap();
        let module = naga::front::wgsl::parse_str(&src)
            .unwrap_or_else(|e| panic!("{}: {}", path.display(), e.emit_to_string(&src)));
        naga::valid::Validator::new(
            naga::valid::ValidationFlags::all(),
            naga::valid::Capabilities::empty(),
        )
        .validate(&module)
        .unwrap_or_else(|e| panic!("{}: {e:?}", path.display()));
        assert!(
            !module.entry_points.is_empty(),
            "{}: no entry point",
            path.display()
        );
        n += 1;
    }
    // every file is used by a kernel and every kernel's file is here
    let mut files: Vec<&str> = vae_ood::gpu::Kernel::ALL
        .iter()
        .map(|k| k.source().0)
        .collect();
    files.dedup();
    assert_eq!(
        n,
        files.len(),
        "shaders/ holds {n} .wgsl files, the kernels use {files:?}"
    );
}

#[test]
fn every_kernel_is_in_a_validated_file() {
    use vae_ood::gpu::Kernel;
    for k in Kernel::ALL {
        let (file, src) = k.source();
        let module = naga::front::wgsl::parse_str(src).unwrap();
        assert!(
            module.entry_points.iter().any(|e| e.name == k.entry()),
            "{file} lacks entry point {}",
            k.entry()
        );
    }
}
