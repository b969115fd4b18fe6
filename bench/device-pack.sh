#!/usr/bin/env bash
# Here (a machine with Rust): build what a GPU machine without Rust needs for
# bench/device-check.sh into .devbin/ (git-ignored): the release binary, the GPU
# test binaries and six kernel experiments (examples/gpu_variants.rs,
# examples/matmul_micro.rs, examples/grid_sync.rs, examples/last_block.rs,
# examples/device_churn.rs, examples/persistent_chain.rs), stripped
# and packed into one .devbin/devbin.tar.xz to travel light (the device call carries
# at most 64 MiB with the working tree, whose data/ is 42 MB; gzip left 24 MB here,
# over the limit, xz -9e of each file 21 MB, one solid tar.xz 7.6 MB). Then carry .devbin to the GPU
# machine and run `bash bench/device-check.sh` there from the repository root.
set -euo pipefail
cd "$(dirname "$0")/.."
grep -qx '/.devbin/' .git/info/exclude 2>/dev/null || echo '/.devbin/' >> .git/info/exclude
cargo build --release --quiet
cargo build --release --quiet --example gpu_variants --example matmul_micro --example grid_sync --example last_block --example device_churn --example persistent_chain
rm -rf .devbin && mkdir -p .devbin
cp target/release/vae-ood .devbin/vae-ood
cp target/release/examples/gpu_variants .devbin/ex_gpu_variants
cp target/release/examples/matmul_micro .devbin/ex_matmul_micro
cp target/release/examples/grid_sync .devbin/ex_grid_sync
cp target/release/examples/last_block .devbin/ex_last_block
cp target/release/examples/device_churn .devbin/ex_device_churn
cp target/release/examples/persistent_chain .devbin/ex_persistent_chain
for t in kernels torch_fixture train_step bench gpu_errors; do
  exe=$(cargo test --release --no-run --message-format=json --test "$t" 2>/dev/null \
    | python3 -c 'import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["name"] == sys.argv[1]:
        print(m["executable"])' "$t" | tail -n 1)
  cp "$exe" ".devbin/test_$t"
done
strip .devbin/*
# one solid archive: the binaries share most of their code (wgpu, naga), which xz
# then stores once (7.6 MB against 21 MB for the files xz'd one by one)
(cd .devbin && tar cf - -- * | xz -9e -T1 > ../devbin.tar.xz) && rm -f .devbin/* &&
  mv devbin.tar.xz .devbin/
ls -la .devbin && du -sh .devbin
