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
    assert_entry_per_op(what, parts, &[]);
}

/// One entry per op name, each positive except those in `zero`, which must read
/// exactly 0.
#[track_caller]
fn assert_entry_per_op(what: &str, parts: &[(String, f64)], zero: &[&str]) {
    let names: Vec<&str> = parts.iter().map(|p| p.0.as_str()).collect();
    assert_eq!(names, TRAIN_STEP_OP_NAMES, "{what}");
    for (name, us) in parts {
        if zero.contains(&name.as_str()) {
            assert_eq!(*us, 0.0, "{what}: {name} runs inside another op's dispatch");
        } else {
            assert!(us.is_finite() && *us > 0.0, "{what}: {name} took {us} µs");
        }
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
    // ops without a dispatch of their own read exactly 0, their time is in the
    // dispatch's first op (unless VAE_OOD_GPU_UNFUSED switches their fusion off):
    // the weight gradients of the layers whose input and weight gradients run as one
    // pair; fc1's product, which reads the images in the gather's dispatch (or
    // the gather, which runs in the previous step's Adam dispatch); the loss,
    // which the BCE kernel writes; the ops in the latent kernels after the first
    // (the head product's forward, fc3's input gradient backward); the head's
    // and fc1's weight gradients, in fc3's triple (or else as one pair); Adam,
    // in the triple's epilogue where VAE_OOD_GPU_TRIPLE_ADAM=1 puts it; and the
    // BCE, in fc4's product unless VAE_OOD_GPU_BCE_EPILOGUE=0 (with the pairs:
    // fc4's pair finishes the loss)
    let unfused = vae_ood::knobs::gpu_unfused;
    let mut zero: Vec<&str> = Vec::new();
    let triple = !unfused("latent") && !unfused("triple");
    let adam = triple && vae_ood::gpu::Fusions::from_env().adam;
    // whether a step's latent forward runs in its fc1 product
    // (VAE_OOD_GPU_LATENT_FC1=1; with the batch's gather or without): where fc1's
    // split sums are folded; whether its latent backward runs in fc4's gradient
    // pair (VAE_OOD_GPU_LATENT_PAIR=1): where the pairs are on and fc4's split
    // sums folded
    let fc1_fused =
        vae_ood::gpu::Fusions::from_env().latent_fc1 && !unfused("latent") && !unfused("reduces");
    let pair_fused = vae_ood::gpu::Fusions::from_env().latent_pair
        && !unfused("latent")
        && !unfused("reduces")
        && !unfused("pairs");
    if !unfused("latent") {
        zero.extend(["reparam fwd", "fc3 fwd", "reparam bwd", "head dX"]);
        // (and the head product in fc1's, where VAE_OOD_GPU_LATENT_FC1=1 puts the
        // latent forward, and fc3's input gradient in fc4's pair, where
        // VAE_OOD_GPU_LATENT_PAIR=1 puts the latent backward)
        if fc1_fused {
            zero.push("head fwd");
        }
        if pair_fused {
            zero.push("fc3 dX");
        }
    }
    if triple {
        zero.extend(["head dW+db", "fc1 dW+db"]);
    }
    if adam {
        zero.push("adam");
    }
    let bce = !unfused("pairs") && vae_ood::gpu::Fusions::from_env().bce;
    if bce {
        zero.push("bce+grad");
    }
    // (inside an epoch a step's gather shares the previous step's Adam dispatch
    // where that is not in the triple, with the pairs on; fc1 then runs alone)
    let gather_with_adam = !adam && !unfused("pairs");
    if gather_with_adam {
        zero.push("gather x");
    } else if !unfused("gather") {
        zero.push("fc1 fwd");
    }
    if !unfused("pairs") {
        zero.extend(["loss reduce", "fc4 dW+db"]);
        if unfused("latent") {
            zero.extend(["fc3 dW+db", "head dW+db"]);
        } else if !triple {
            // the head's and fc1's weight gradients as one pair
            zero.push("fc1 dW+db");
        }
    }
    assert_entry_per_op("timestamps", &parts, &zero);
    // one step's ops inside a run of reps + 1 whole epochs (3 steps each): their
    // mean cannot exceed the wall time of those runs (catches a unit error)
    let step_us: f64 = parts.iter().map(|p| p.1).sum();
    assert!(
        step_us < wall_us / (reps + 1) as f64,
        "timed step {step_us} µs vs {wall_us} µs for {} epochs",
        reps + 1
    );

    // the reference step: 17 ops, 22 dispatches (5 split-K products); 15 with the
    // three gradient pairs, the loss in the BCE kernel and three folded reduces
    // (without the pairs, dz's reduce is not next to its reader, so two folds
    // remain); 10 with the latent kernels as well, which take the head and dz
    // products (and their folds) and the fc3 and head pairs' input gradients,
    // read fc1's product and fc4's input gradient from their split sums (two more
    // folds; without the pairs fc4's is not next to its reader) and move fc3's
    // weight gradient after them; 9 with that and the head's and fc1's weight
    // gradients as one triple (without it: fc3's alone, the other two as a pair;
    // without the pairs: the triple all the same); 8 with the gather in fc1's
    // product (the default); 7 with the step's Adam in the triple as well. Two
    // steps: twice that, where the first step's Adam (unless it is in the
    // triple) and the second's gather share a dispatch, and the second's fc1
    // then runs alone (so the gather in fc1 saves a dispatch only at a run's
    // first step)
    let steps = vae_ood::bench::epoch_ops(&ex);
    let part = std::env::var(vae_ood::knobs::GPU_UNFUSED);
    let (one, two_steps) = match (part.as_deref(), adam) {
        (Ok("1"), _) => (22, 44),
        (Ok("latent"), _) => (14, 28),
        (Ok("triple"), _) => (9, 18),
        (Ok("pairs") | Ok("reduces"), true) => (10, 20),
        // (without the pairs Adam runs alone and every gather in its fc1)
        (Ok("pairs") | Ok("reduces"), false) => (11, 22),
        (Ok("gather"), true) => (8, 16),
        (Ok("gather"), false) => (9, 17),
        (_, true) => (7, 14),
        (_, false) => (8, 16),
    };
    // (one fewer per step with the BCE epilogue, with the latent forward in fc1's
    // product and with the latent backward in fc4's pair)
    let fewer = bce as usize + fc1_fused as usize + pair_fused as usize;
    let (one, two_steps) = (one - fewer, two_steps - 2 * fewer);
    assert_eq!(ex.backend.dispatches(&steps[0]), Some(one));
    let two: Vec<_> = steps[0].iter().chain(&steps[1]).copied().collect();
    assert_eq!(ex.backend.dispatches(&two), Some(two_steps));

    let alone = per_kernel(&mut ex, BreakdownMethod::EachOpAlone, 1).unwrap();
    assert_one_positive_entry_per_op("each op alone (GPU)", &alone);
    // training went on through both: the parameters are still finite
    assert!(ex.params().unwrap().iter().all(|v| v.is_finite()));
}

/// On the CPU the "timestamps" are the host clock between the ops of one step
/// inside a training epoch, with the backend's fusions in place: the decoder
/// output's BCE runs inside "fc4 fwd" (so "bce+grad" reads exactly 0) and Adam
/// inside the weight gradients ("adam" is left with next to nothing).
#[test]
fn cpu_times_each_op_inside_a_training_epoch() {
    let cfg = TrainConfig {
        train_limit: Some(300),
        epochs: 1,
        ..TrainConfig::default()
    };
    let mut ex = Experiment::new(cfg, DeviceChoice::Cpu, true).unwrap();
    assert!(ex.backend.has_timestamps());
    let t = Instant::now();
    let reps = 2;
    let parts = per_kernel(&mut ex, BreakdownMethod::Timestamps, reps).unwrap();
    let wall_us = t.elapsed().as_secs_f64() * 1e6;
    let names: Vec<&str> = parts.iter().map(|p| p.0.as_str()).collect();
    assert_eq!(names, TRAIN_STEP_OP_NAMES);
    for (name, us) in &parts {
        if name == "bce+grad" {
            assert_eq!(*us, 0.0, "bce+grad runs fused into fc4 fwd");
        } else {
            assert!(us.is_finite() && *us > 0.0, "{name} took {us} µs");
        }
    }
    let get = |n: &str| parts.iter().find(|p| p.0 == n).unwrap().1;
    // Adam fused away: what is left of the op is bookkeeping, far less than the
    // weight gradient that now includes its share
    assert!(get("adam") < get("fc1 dW+db"), "{parts:?}");
    let step_us: f64 = parts.iter().map(|p| p.1).sum();
    assert!(
        step_us < wall_us / (reps + 1) as f64,
        "timed step {step_us} µs vs {wall_us} µs"
    );

    let alone = per_kernel(&mut ex, BreakdownMethod::EachOpAlone, 1).unwrap();
    assert_one_positive_entry_per_op("each op alone (CPU)", &alone);
}

#[test]
fn bench_json_says_how_the_breakdown_was_measured() {
    let out = Command::cargo_bin("vae-ood")
        .unwrap()
        .args([
            "bench",
            "--device",
            "cpu",
            "--epochs",
            "1",
            "--warmup",
            "0",
            "--train-limit",
            "300",
            "--json",
        ])
        .assert()
        .success();
    let stdout = String::from_utf8_lossy(&out.get_output().stdout).to_string();
    let line = stdout
        .lines()
        .rev()
        .find(|l| l.starts_with('{'))
        .expect("a JSON line");
    let v: serde_json::Value = serde_json::from_str(line).unwrap();
    assert_eq!(v["breakdown_method"], "timestamps", "{line}");
    let parts = v["breakdown_us_per_step"].as_array().unwrap();
    assert_eq!(parts.len(), TRAIN_STEP_OP_NAMES.len(), "{line}");
    assert!(v["samples_per_s"].as_f64().unwrap() > 0.0, "{line}");
    // dispatches are a GPU notion
    assert!(v["dispatches_per_step"].is_null(), "{line}");
}
