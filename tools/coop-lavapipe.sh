#!/usr/bin/env bash
# The tensor-core matmul walk (shaders/matmul_walk_coop.wgsl, VAE_OOD_GPU_COOP=1)
# on a CPU: Mesa's lavapipe has cooperative matrices (8x8x8, f16 into f32) from
# Mesa 25.1 on, Debian 12 ships 22.3. This makes a Debian 13 root with
# trixie-backports' Mesa (26.1 on 2026-11-26) once, bind-mounts the repository into
# it and runs there, built here:
#   - all of tests/kernels.rs with VAE_OOD_TEST_REQUIRE_COOP=1: its
#     tensor_core_walk_against_its_twin then fails if the adapter offers no usable
#     cooperative matrices, instead of checking the refusal only, and every other
#     kernel test must still meet its f32 tolerances on an adapter where the
#     program would choose the tensor cores by itself (VAE_OOD_GPU_COOP unset: the
#     tests open the FMA walk, tests/common's test_options; on an NVIDIA H200 on
#     2026-11-27 eight of them ran on the tensor cores before they did, and failed);
#   - examples/persistent_chain.rs with two repetitions, strict: its dispatch chain
#     against its CPU twin, and its one-dispatch ways (ticketed; persistent with
#     one workgroup; plain, @coherent, and plain under the Vulkan memory model,
#     PERSISTENT_CHAIN_VMM=1) against the chain, bit for bit (Debian 12's lavapipe
#     22.3 cuts their long loops short, so only here);
#   - spirv-val (SPIRV-Tools 2025.1, in the root) on the persistent step's SPIR-V
#     as built for the tensor cores, its cross-phase accesses made visible
#     (src/gpu/persistent/spirv.rs: the default training step's module with each
#     fragment shape, trusted and checked, written by the lib's unit test
#     the_default_step_is_one_valid_module);
#   - the persistent step (VAE_OOD_GPU_PERSISTENT, src/gpu/persistent.rs) against
#     the dispatches it replaces: tests/train_step.rs's tests of it (on the tensor
#     cores too, required), and a one-epoch
#     run of 640 images (hidden width 64) with one workgroup, with two and with
#     `auto` (its probe, then one workgroup on a software adapter), on the FMA walk
#     and on the tensor cores (there also with VAE_OOD_GPU_PERSISTENT_PLAIN=1: the
#     module as wgpu compiles its WGSL), whose scores and weights must be byte for
#     byte the dispatches'. Two workgroups
#     wait on each other at every grid barrier: Mesa 26.1's lavapipe runs two at
#     once on two cores (CI's machines have two), where 22.3's barrier waits give
#     up (the run is then an error, as on a GPU given more workgroups than it runs
#     at once);
#   - with `--run`, also a one-epoch run on the first 1,024 images with the walk and
#     without, printing both (output under /tmp in the root).
# Needs root (debootstrap, chroot, mount) and Debian's package mirror. CI runs it
# after the README's test command (.ci/run). VAE_OOD_COOP_ROOT picks the root's
# folder (default /var/tmp/vae-ood-trixie: kept between runs).
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)
root=${VAE_OOD_COOP_ROOT:-/var/tmp/vae-ood-trixie}
mirror=http://deb.debian.org/debian

if [ ! -x "$root/usr/bin/vulkaninfo" ]; then
  if ! command -v debootstrap >/dev/null; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null
  fi
  rm -rf "$root"
  echo "coop-lavapipe: making a Debian 13 root in $root (a few minutes, once)"
  debootstrap --variant=minbase trixie "$root" "$mirror" >"$root.log" 2>&1 ||
    { tail -20 "$root.log"; exit 1; }
  echo "deb $mirror trixie-backports main" >"$root/etc/apt/sources.list.d/backports.list"
  # (apt's output to the log: it only matters when Mesa did not get installed)
  { chroot "$root" apt-get update -qq &&
    DEBIAN_FRONTEND=noninteractive chroot "$root" apt-get install -y -qq --no-install-recommends \
      -t trixie-backports mesa-vulkan-drivers libvulkan1 vulkan-tools; } >>"$root.log" 2>&1 || true
  [ -x "$root/usr/bin/vulkaninfo" ] ||
    { tail -20 "$root.log"; echo "coop-lavapipe: Mesa not installed in $root"; exit 1; }
fi
# (Debian 12's SPIRV-Tools 2023.1 does not know cooperative matrices; 13's does)
if [ ! -x "$root/usr/bin/spirv-val" ]; then
  { chroot "$root" apt-get update -qq &&
    DEBIAN_FRONTEND=noninteractive chroot "$root" apt-get install -y -qq --no-install-recommends \
      spirv-tools; } >>"$root.log" 2>&1 || true
  [ -x "$root/usr/bin/spirv-val" ] ||
    { tail -20 "$root.log"; echo "coop-lavapipe: spirv-tools not installed in $root"; exit 1; }
fi

# the test binary, built here (the root has no Rust)
bin=$(cargo test --release --test kernels --no-run 2>&1 |
  sed -n 's/.*Executable tests\/kernels.rs (\(.*\))/\1/p' | tail -1)
[ -n "$bin" ] || { echo "coop-lavapipe: no kernels test binary"; exit 1; }
steps=$(cargo test --release --test train_step --no-run 2>&1 |
  sed -n 's/.*Executable tests\/train_step.rs (\(.*\))/\1/p' | tail -1)
[ -n "$steps" ] || { echo "coop-lavapipe: no train_step test binary"; exit 1; }
cargo build --release --quiet
cargo build --release --quiet --example persistent_chain
# the persistent step's SPIR-V for the tensor cores, for spirv-val below
rm -rf target/spirv
VAE_OOD_TEST_SPIRV_OUT=target/spirv cargo test --release --quiet --lib the_default_step_is_one_valid_module >/dev/null
[ "$(ls target/spirv/*.spv | wc -l)" = 4 ] || { echo "coop-lavapipe: no SPIR-V written"; exit 1; }

mkdir -p "$root/work"
mountpoint -q "$root/work" || mount --bind "$repo" "$root/work"
trap 'umount "$root/work"' EXIT
inside() {
  chroot "$root" /usr/bin/env -i PATH=/usr/bin:/bin HOME=/root XDG_RUNTIME_DIR=/tmp \
    sh -c "cd /work && $1"
}
inside "vulkaninfo --summary 2>/dev/null | grep -m1 driverInfo; ./target/release/vae-ood devices 2>/dev/null || true"
inside "VAE_OOD_TEST_REQUIRE_COOP=1 $bin --test-threads 2"
inside "PERSISTENT_CHAIN_VMM=1 PERSISTENT_CHAIN_STRICT=1 ./target/release/examples/persistent_chain 2"
for spv in target/spirv/*.spv; do
  inside "spirv-val --target-env vulkan1.3 $spv && echo 'spirv-val: $spv valid'"
done
inside "VAE_OOD_TEST_REQUIRE_COOP=1 $steps --test-threads 1 persistent"
# (COOP: the FMA walk, then the tensor cores' 8x8x8; each run's log kept, for the
# notice a persistent step that could not be built would print)
for coop in 0 1; do
  for p in "" 1 2 auto; do
    inside "VAE_OOD_GPU_COOP=$coop VAE_OOD_GPU_LATENT_THREADS=256 VAE_OOD_GPU_PERSISTENT=$p ./target/release/vae-ood --device gpu --epochs 1 --train-limit 640 --hidden 64 --out /tmp/persistent$coop$p >/tmp/persistent$coop$p.log 2>&1; grep -v '^vae-ood: \\|wrote' /tmp/persistent$coop$p.log"
  done
  for p in 1 2 auto; do
    inside "! grep 'could not be built' /tmp/persistent$coop$p.log && cmp /tmp/persistent$coop/scores.csv /tmp/persistent$coop$p/scores.csv && cmp /tmp/persistent$coop/model.safetensors /tmp/persistent$coop$p/model.safetensors && echo 'persistent step of $p workgroups, VAE_OOD_GPU_COOP=$coop: the same scores and weights, byte for byte'"
  done
done
# the tensor cores' persistent step from its WGSL (plain loads), against their dispatches
for p in 1 2; do
  inside "VAE_OOD_GPU_COOP=1 VAE_OOD_GPU_PERSISTENT_PLAIN=1 VAE_OOD_GPU_LATENT_THREADS=256 VAE_OOD_GPU_PERSISTENT=$p ./target/release/vae-ood --device gpu --epochs 1 --train-limit 640 --hidden 64 --out /tmp/plain$p >/tmp/plain$p.log 2>&1; grep -v '^vae-ood: \\|wrote' /tmp/plain$p.log"
  inside "! grep 'could not be built' /tmp/plain$p.log && cmp /tmp/persistent1/scores.csv /tmp/plain$p/scores.csv && cmp /tmp/persistent1/model.safetensors /tmp/plain$p/model.safetensors && echo 'persistent step of $p workgroups, VAE_OOD_GPU_COOP=1, VAE_OOD_GPU_PERSISTENT_PLAIN=1: the same scores and weights, byte for byte'"
done
if [ "${1:-}" = --run ]; then
  for coop in 1 0; do
    echo "## VAE_OOD_GPU_COOP=$coop"
    inside "VAE_OOD_GPU_COOP=$coop ./target/release/vae-ood --device gpu --epochs 1 --train-limit 1024 --out /tmp/coop$coop 2>&1 | grep -v '^vae-ood: \\|wrote'"
  done
fi
