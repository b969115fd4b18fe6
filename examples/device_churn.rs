//! How many GPU devices can one process open, one after another, each dropped
//! before the next? On an NVIDIA H200 (2026-11-27) the GPU test binaries, which
//! open a backend (adapter, device, buffers, pipelines) per test and per variant,
//! stopped finding any adapter partway through: every later test failed with "no
//! GPU adapter found". This probe opens and drops, `rounds` times each (default
//! 150), in three ways, and prints every tenth round's open file descriptors,
//! threads and resident memory of the process, and the first failure:
//!
//! - `fresh`: a new wgpu instance, adapter and device each round (what every test
//!   did through `gpu::select_adapter` before it shared one instance);
//! - `shared`: one instance, a new adapter and device each round;
//! - `backend`: `gpu::select_adapter` (now one instance per process) and a whole
//!   `GpuBackend` of the reference model's sizes each round, as the tests open.
//!
//! Counts that grow round after round are what a dropped device left behind. A
//! kernel experiment for the test harness, not part of the training path.
//!
//!   cargo run --release --example device_churn [rounds]
use std::time::Instant;
use vae_ood::gpu::{self, GpuBackend};
use vae_ood::model::{Dims, Layout};
use vae_ood::plan::Sizes;

/// (open file descriptors, threads, resident KiB) of this process (Linux; zeros
/// elsewhere).
fn usage() -> (usize, usize, usize) {
    let fds = std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count());
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| -> usize {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (fds, field("Threads:"), field("VmRSS:"))
}

fn device(inst: &wgpu::Instance) -> Result<(), String> {
    let adapter = pollster::block_on(inst.request_adapter(&wgpu::RequestAdapterOptions::default()))
        .map_err(|e| format!("adapter: {e}"))?;
    let (device, queue) =
        pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor::default()))
            .map_err(|e| format!("device: {e}"))?;
    // one buffer written and waited for: the device did something before it goes
    let buf = device.create_buffer(&wgpu::BufferDescriptor {
        label: None,
        size: 1 << 20,
        usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    });
    queue.write_buffer(&buf, 0, &[1u8; 1 << 20]);
    queue.submit([]);
    device
        .poll(wgpu::PollType::wait_indefinitely())
        .map_err(|e| format!("poll: {e}"))?;
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let rounds: usize = std::env::args().nth(1).map_or(Ok(150), |a| a.parse())?;
    let dims = Dims {
        d: 784,
        h: 400,
        l: 20,
    };
    let sizes = Sizes {
        dims,
        params: Layout::new(dims).total,
        max_images: 128,
        max_rows: 128,
        sample_slots: 1024,
        batch_slots: 16,
    };
    let store = vec![0u8; 784 * 64];
    let shared =
        wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle_from_env());
    let (fds, threads, rss) = usage();
    println!("start: {fds} fds, {threads} threads, {rss} KiB resident");
    for mode in ["fresh", "shared", "backend"] {
        let t = Instant::now();
        let mut failed = None;
        for r in 1..=rounds {
            let res = match mode {
                "fresh" => device(&wgpu::Instance::new(
                    wgpu::InstanceDescriptor::new_without_display_handle_from_env(),
                )),
                "shared" => device(&shared),
                _ => match gpu::select_adapter() {
                    Ok(Some(a)) => GpuBackend::new(a, &store, 64, sizes)
                        .map(drop)
                        .map_err(|e| format!("backend: {e:#}")),
                    Ok(None) => Err("no adapter".to_string()),
                    Err(e) => Err(format!("{e:#}")),
                },
            };
            let (fds, threads, rss) = usage();
            if let Err(e) = res {
                failed = Some(format!(
                    "round {r} failed: {e} ({fds} fds, {threads} threads, {rss} KiB)"
                ));
                break;
            }
            if r % 10 == 0 || r == 1 {
                println!("{mode:>7} round {r:>4}: {fds:>5} fds, {threads:>4} threads, {rss:>8} KiB resident");
            }
        }
        println!(
            "{mode:>7}: {} in {:.1} s",
            failed.unwrap_or_else(|| format!("all {rounds} rounds opened")),
            t.elapsed().as_secs_f64()
        );
    }
    Ok(())
}
