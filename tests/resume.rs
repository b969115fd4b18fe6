//! Interrupted and resumed training: `train --resume` after a clean stop or a
//! SIGKILL reaches the same parameters as an uninterrupted run (CPU backend,
//! which is deterministic), and a diverging run destroys nothing already written.

use assert_cmd::Command;
use std::path::Path;
use std::time::{Duration, Instant};
use vae_ood::checkpoint;

const LIMIT: &str = "1500";

/// The arguments of a small CPU training run into `out`.
fn run_args(out: &Path, epochs: u32) -> Vec<std::ffi::OsString> {
    let mut v: Vec<std::ffi::OsString> =
        ["--device", "cpu", "--train-limit", LIMIT, "-q", "--epochs"]
            .iter()
            .map(Into::into)
            .collect();
    v.push(epochs.to_string().into());
    v.push("--out".into());
    v.push(out.into());
    v
}

fn train(out: &Path, epochs: u32, extra: &[&str]) -> assert_cmd::assert::Assert {
    Command::cargo_bin("vae-ood")
        .unwrap()
        .args(run_args(out, epochs))
        .args(extra)
        .assert()
}

fn params(out: &Path) -> Vec<f32> {
    checkpoint::load(&out.join("model.safetensors"), None)
        .unwrap()
        .params
}

#[test]
fn resume_after_a_clean_stop_equals_an_uninterrupted_run() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    train(&a, 3, &[]).success();
    train(&b, 1, &[]).success();
    train(&b, 3, &["--resume"]).success();
    assert!(
        params(&a) == params(&b),
        "resumed parameters differ from the uninterrupted run"
    );
    let ma: serde_json::Value =
        serde_json::from_slice(&std::fs::read(a.join("metrics.json")).unwrap()).unwrap();
    let mb: serde_json::Value =
        serde_json::from_slice(&std::fs::read(b.join("metrics.json")).unwrap()).unwrap();
    assert_eq!(ma["epochs"].as_array().unwrap().len(), 3);
    for (x, y) in ma["epochs"]
        .as_array()
        .unwrap()
        .iter()
        .zip(mb["epochs"].as_array().unwrap())
    {
        assert_eq!(x["train_loss"], y["train_loss"]);
    }
    assert_eq!(ma["protocols"], mb["protocols"]);
}

#[test]
fn resume_after_sigkill_mid_training_equals_an_uninterrupted_run() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    train(&a, 4, &[]).success();
    let bin = assert_cmd::cargo::cargo_bin("vae-ood");
    let mut child = std::process::Command::new(bin)
        .args(run_args(&b, 4))
        .spawn()
        .unwrap();
    // wait for the first epoch's state, then kill without warning
    let state = b.join("train_state.safetensors");
    let t0 = Instant::now();
    while !state.exists() {
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "no training state appeared"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    std::thread::sleep(Duration::from_millis(30));
    child.kill().unwrap(); // SIGKILL on Unix
    let status = child.wait().unwrap();
    let finished = status.success();
    // whatever epoch it died in, the files on disk are whole and resumable (and the
    // model is there: each epoch writes it before the state waited for above)
    let ck = checkpoint::load(&b.join("model.safetensors"), None).unwrap();
    assert!(ck.metadata.contains_key("vae_ood.epoch"));
    train(&b, 4, &["--resume"]).success();
    assert!(
        params(&a) == params(&b),
        "parameters after kill + resume differ (the first run finished: {finished})"
    );
}

#[test]
fn a_diverging_run_reports_the_epoch_and_keeps_existing_files() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("o");
    train(&out, 1, &[]).success();
    let before = std::fs::read(out.join("model.safetensors")).unwrap();
    let metrics = std::fs::read(out.join("metrics.json")).unwrap();
    let assert = train(&out, 3, &["--lr", "10"]).failure().code(1);
    let err = String::from_utf8_lossy(&assert.get_output().stderr).to_string();
    let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "one-line error expected, got {err:?}");
    assert!(
        lines[0].starts_with("error: training diverged in epoch 1"),
        "{err}"
    );
    assert!(!err.contains("panicked"));
    assert_eq!(
        std::fs::read(out.join("model.safetensors")).unwrap(),
        before,
        "checkpoint was damaged"
    );
    assert_eq!(
        std::fs::read(out.join("metrics.json")).unwrap(),
        metrics,
        "metrics.json was damaged"
    );
}

#[test]
fn resume_refuses_a_different_configuration_and_a_missing_state() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("o");
    let a = train(&out, 1, &["--resume"]).failure().code(1);
    let err = String::from_utf8_lossy(&a.get_output().stderr).to_string();
    assert!(
        err.starts_with("error: cannot read training state"),
        "{err}"
    );
    train(&out, 1, &[]).success();
    let a = train(&out, 2, &["--resume", "--seed", "2"])
        .failure()
        .code(1);
    let err = String::from_utf8_lossy(&a.get_output().stderr).to_string();
    assert!(err.contains("different configuration"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
}

/// Same seed, same backend: metrics.json is identical apart from wall-clock timing.
#[test]
fn same_seed_gives_bit_identical_metrics() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    train(&a, 2, &[]).success();
    train(&b, 2, &[]).success();
    let strip = |p: &Path| {
        let mut v: serde_json::Value =
            serde_json::from_slice(&std::fs::read(p.join("metrics.json")).unwrap()).unwrap();
        v.as_object_mut().unwrap().remove("timing");
        for e in v["epochs"].as_array_mut().unwrap() {
            e.as_object_mut().unwrap().remove("seconds");
        }
        v
    };
    let (ma, mb) = (strip(&a), strip(&b));
    assert!(ma["protocols"]["clean"]["auroc"].as_f64().unwrap() > 0.0);
    assert_eq!(ma, mb, "metrics.json differs between two identical runs");
    assert_eq!(
        std::fs::read(a.join("scores.csv")).unwrap(),
        std::fs::read(b.join("scores.csv")).unwrap()
    );
}
