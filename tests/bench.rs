//! `vae-ood bench`'s per-kernel breakdown: with GPU timestamps (lavapipe has
//! them: the test fails on an adapter without, unless there is no adapter at all
//! and VAE_OOD_SKIP_GPU_TESTS=1) and with the each-op-alone fallback.

mod common;

use assert_cmd::Command;
use common::*;
use std::time::Instant;
use vae_ood::backend::DeviceChoice;
use vae_ood::bench::{per_kernel, BreakdownMethod};
use vae_ood::model::Dims;
use vae_ood::plan::TRAIN_STEP_OP_NAMES;
use vae_ood::train::{Experiment, TrainConfig};

#[track_caller]
fn assert_one_positive_entry_per_op(what: &str, parts: &[(String, f64)]) {
    let names: Vec<&str> = parts.iter().map(|p| p.0.as_str()).collect();
    assert_eq!(names, TRAIN_STEP_OP_NAMES, "{what}");
    for (name, us) in parts {
        assert!(us.is_finite() && *us > 0.0, "{what}: {name} took {us} µs");
    }
}

#[test]
fn timestamp_breakdown_has_one_positive_entry_per_op() {
    // fails without an adapter unless VAE_OOD_SKIP_GPU_TESTS=1 (see common)
    if gpu_backend(&[0; 4], 1, tiny_sizes(Dims { d: 4, h: 2, l: 1 }, 1)).is_none() {
        return;
    }
    let adapter = vae_ood::gpu::select_adapter().unwrap().unwrap();
    let ts = wgpu::Features::TIMESTAMP_QUERY | wgpu::Features::TIMESTAMP_QUERY_INSIDE_PASSES;
    assert!(
        adapter.features().contains(ts),
        "GPU adapter {} has no timestamp queries inside passes: the timestamp breakdown cannot be tested on it",
        adapter.get_info().name
    );
    let cfg = TrainConfig {
        train_limit: Some(300), // 3 steps of 128, 128, 44 images
        epochs: 1,
        ..TrainConfig::default()
    };
    let mut ex = Experiment::new(cfg, DeviceChoice::Gpu, true).unwrap();
    assert!(ex.backend.has_timestamps(), "{}", ex.backend.describe());
    let t = Instant::now();
    let reps = 2;
    let parts = per_kernel(&mut ex, BreakdownMethod::Timestamps, reps).unwrap();
    let wall_us = t.elapsed().as_secs_f64() * 1e6;
    eprintln!("timestamps on {}: {parts:?}", ex.backend.describe());
    assert_one_positive_entry_per_op("timestamps", &parts);
    // one step's ops inside a run of reps + 1 whole epochs (3 steps each): their
    // mean cannot exceed the wall time of those runs (catches a unit error)
    let step_us: f64 = parts.iter().map(|p| p.1).sum();
    assert!(
        step_us < wall_us / (reps + 1) as f64,
        "timed step {step_us} µs vs {wall_us} µs for {} epochs",
        reps + 1
    );

    let alone = per_kernel(&mut ex, BreakdownMethod::EachOpAlone, 1).unwrap();
    assert_one_positive_entry_per_op("each op alone (GPU)", &alone);
    // training went on through both: the parameters are still finite
    assert!(ex.params().unwrap().iter().all(|v| v.is_finite()));
}

#[test]
fn cpu_has_no_timestamps_and_falls_back() {
    let cfg = TrainConfig {
        train_limit: Some(300),
        epochs: 1,
        ..TrainConfig::default()
    };
    let mut ex = Experiment::new(cfg, DeviceChoice::Cpu, true).unwrap();
    assert!(!ex.backend.has_timestamps());
    assert!(per_kernel(&mut ex, BreakdownMethod::Timestamps, 1).is_err());
    let alone = per_kernel(&mut ex, BreakdownMethod::EachOpAlone, 1).unwrap();
    assert_one_positive_entry_per_op("each op alone (CPU)", &alone);
}

#[test]
fn bench_asking_for_timestamps_on_the_cpu_is_a_one_line_error() {
    let out = Command::cargo_bin("vae-ood")
        .unwrap()
        .args([
            "bench",
            "--device",
            "cpu",
            "--breakdown",
            "timestamps",
            "--train-limit",
            "300",
        ])
        .assert()
        .failure()
        .code(1);
    let err = String::from_utf8_lossy(&out.get_output().stderr).to_string();
    let lines: Vec<&str> = err.lines().filter(|l| l.starts_with("error")).collect();
    assert_eq!(lines.len(), 1, "{err}");
    assert!(lines[0].contains("timestamp"), "{err}");
}
