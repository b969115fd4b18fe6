//! The `vae-ood` binary end to end: `eval` reproduces training's scores, `score`
//! reads PNGs / folders / IDX files, and every bad input or flag is a one-line
//! `error: ...` with a non-zero exit code, no panic and no damage to the output.
//! Everything runs on the CPU backend (the GPU path is covered by the other tests).

use assert_cmd::Command;
use safetensors::{tensor::TensorView, Dtype};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::Output;
use vae_ood::checkpoint;
use vae_ood::dataset::{load_splits, PIXELS};
use vae_ood::idx::{self, Images};
use vae_ood::model::{Dims, Layout};

fn mnist() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("data")
        .join("mnist")
}

fn bin() -> Command {
    let mut c = Command::cargo_bin("vae-ood").expect("vae-ood binary");
    c.env("RUST_LOG", "warn");
    c
}

fn run(args: &[&str]) -> Output {
    bin().args(args).output().expect("run vae-ood")
}

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// The command failed with exit code 1, and stderr is exactly one non-empty line,
/// starting with "error", with no panic.
fn assert_one_line_error(o: &Output, what: &str) -> String {
    let err = stderr(o);
    assert!(
        !o.status.success(),
        "{what}: expected failure, stderr: {err}"
    );
    assert!(!err.contains("panicked"), "{what}: panicked: {err}");
    let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(
        lines.len(),
        1,
        "{what}: expected one stderr line, got {err:?}"
    );
    assert!(lines[0].starts_with("error: "), "{what}: {err:?}");
    assert_eq!(o.status.code(), Some(1), "{what}: {err:?}");
    lines[0].to_string()
}

/// A command-line parse error from clap: non-zero exit (2), one line starting
/// with "error:" (clap adds a usage block after it), no panic.
fn assert_parse_error(o: &Output, what: &str) -> String {
    let err = stderr(o);
    assert!(
        !o.status.success(),
        "{what}: expected failure, stderr: {err}"
    );
    assert!(!err.contains("panicked"), "{what}: panicked: {err}");
    let errors: Vec<&str> = err.lines().filter(|l| l.starts_with("error")).collect();
    assert_eq!(errors.len(), 1, "{what}: {err:?}");
    assert!(err.starts_with("error: "), "{what}: {err:?}");
    errors[0].to_string()
}

/// Every file under `dir` with its bytes (recursive), to see that nothing changed.
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut m = BTreeMap::new();
    if !dir.exists() {
        return m;
    }
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            m.extend(snapshot(&p));
        } else {
            m.insert(p.clone(), std::fs::read(&p).unwrap());
        }
    }
    m
}

/// An output folder holding a previous run's file, to check failures leave it alone.
fn precious_out(root: &Path) -> PathBuf {
    let out = root.join("out");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(
        out.join("scores.csv"),
        b"split,index,label,score_neg_elbo\ntrain,1,0,100\n",
    )
    .unwrap();
    std::fs::write(out.join("metrics.json"), b"{\"precious\": true}").unwrap();
    out
}

/// Train a tiny model on the CPU into `root/NAME`; returns that folder.
fn train_tiny(root: &Path, name: &str, extra: &[&str]) -> PathBuf {
    let out = root.join(name);
    let data = mnist();
    let mut args = vec![
        "--device",
        "cpu",
        "--data",
        s(&data),
        "--epochs",
        "1",
        "-q",
        "--out",
        s(&out),
    ];
    args.extend_from_slice(extra);
    let o = run(&args);
    assert!(o.status.success(), "training failed: {}", stderr(&o));
    assert!(out.join("model.safetensors").exists());
    out
}

/// A checkpoint with initial (untrained) parameters and no stored config.
fn fresh_checkpoint(path: &Path, dims: Dims) {
    let lay = Layout::new(dims);
    checkpoint::save(path, &lay, &lay.init(11), HashMap::new()).unwrap();
}

fn grey_png(path: &Path, w: u32, h: u32, value: u8) {
    let mut bytes = Vec::new();
    {
        let mut enc = png::Encoder::new(&mut bytes, w, h);
        enc.set_color(png::ColorType::Grayscale);
        enc.set_depth(png::BitDepth::Eight);
        let mut wr = enc.write_header().unwrap();
        wr.write_image_data(&vec![value; (w * h) as usize]).unwrap();
    }
    std::fs::write(path, bytes).unwrap();
}

/// (split, index, label, score) rows of a scores.csv / (name, score) rows of a score CSV.
fn csv_rows(path: &Path) -> Vec<Vec<String>> {
    let mut r = csv::Reader::from_path(path).unwrap();
    r.records()
        .map(|x| x.unwrap().iter().map(str::to_string).collect())
        .collect()
}

fn json(path: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

// ---------------------------------------------------------------- eval / score

#[test]
fn eval_reproduces_training_scores() {
    let dir = tempfile::tempdir().unwrap();
    let train = train_tiny(
        dir.path(),
        "train",
        &["--train-limit", "300", "--seed", "3"],
    );
    let ck = train.join("model.safetensors");

    let ev = dir.path().join("eval");
    let o = run(&[
        "eval",
        "--checkpoint",
        s(&ck),
        "--device",
        "cpu",
        "--out",
        s(&ev),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(stdout.contains("AUROC seed protocol"), "{stdout}");
    assert!(stdout.contains("AUROC clean protocol"), "{stdout}");
    for f in [
        "metrics.json",
        "scores.csv",
        "roc.png",
        "score_hist.png",
        "recon_normal.png",
        "recon_anomaly.png",
    ] {
        assert!(ev.join(f).is_file(), "{f} missing");
    }
    assert!(!ev.join("model.safetensors").exists() && !ev.join("elbo.png").exists());

    // same checkpoint, seed, splits and backend: the very same scores, byte for byte
    let a = std::fs::read_to_string(train.join("scores.csv")).unwrap();
    let b = std::fs::read_to_string(ev.join("scores.csv")).unwrap();
    assert_eq!(a.lines().count(), 1 + 300 + 10_000);
    assert!(a == b, "eval's scores.csv differs from training's");

    let mt = json(&train.join("metrics.json"));
    let me = json(&ev.join("metrics.json"));
    assert_eq!(me["mode"], "eval");
    assert!(me.get("epochs").is_none());
    assert_eq!(me["config_source"], "checkpoint");
    assert_eq!(me["config"]["seed"], 3);
    assert_eq!(me["protocols"], mt["protocols"]);

    // the scoring batch size does not change a score (ε is per image row)
    let ev2 = dir.path().join("eval2");
    let o = run(&[
        "eval",
        "-q",
        "--checkpoint",
        s(&ck),
        "--device",
        "cpu",
        "--score-batch",
        "77",
        "--out",
        s(&ev2),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        o.stdout.is_empty(),
        "-q printed {:?}",
        String::from_utf8_lossy(&o.stdout)
    );
    assert!(a == std::fs::read_to_string(ev2.join("scores.csv")).unwrap());

    // another seed draws another ε: different scores, same rows
    let ev3 = dir.path().join("eval3");
    let o = run(&[
        "eval",
        "-q",
        "--checkpoint",
        s(&ck),
        "--device",
        "cpu",
        "--seed",
        "4",
        "--out",
        s(&ev3),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let c = std::fs::read_to_string(ev3.join("scores.csv")).unwrap();
    assert_eq!(c.lines().count(), a.lines().count());
    assert!(a != c);

    // `score` on the first training images (in order) gives their training scores:
    // the same ε rows of the same stream.
    let splits = load_splits(&mnist(), 5).unwrap();
    let n = 6;
    let images = Images {
        n,
        rows: 28,
        cols: 28,
        pixels: splits.train.pixels[..n * PIXELS].to_vec(),
    };
    let idx_path = dir.path().join("first.idx.gz");
    idx::write_images(&idx_path, &images, true).unwrap();
    let sc = dir.path().join("first.csv");
    let o = run(&[
        "score",
        "-q",
        "--checkpoint",
        s(&ck),
        "--device",
        "cpu",
        "--out",
        s(&sc),
        s(&idx_path),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let got = csv_rows(&sc);
    let want = csv_rows(&train.join("scores.csv"));
    assert_eq!(got.len(), n);
    for i in 0..n {
        assert_eq!(got[i][0], format!("{}[{i}]", idx_path.display()));
        assert_eq!(want[i][0], "train");
        assert_eq!(want[i][1], splits.train.source_index[i].to_string());
        // same ε; the product's blocking differs between a batch of 6 and one of
        // 1024 (gemm), so equal up to f32 rounding of a ~800-term sum
        let (g, w): (f64, f64) = (got[i][1].parse().unwrap(), want[i][3].parse().unwrap());
        assert!((g - w).abs() <= 1e-5 * w.abs(), "image {i}: {g} vs {w}");
    }
}

#[test]
fn eval_other_model_size() {
    let dir = tempfile::tempdir().unwrap();
    let train = train_tiny(
        dir.path(),
        "h50",
        &["--hidden", "50", "--train-limit", "100"],
    );
    let ck = train.join("model.safetensors");
    // sizes come from the checkpoint
    let ev = dir.path().join("eval");
    let o = run(&[
        "eval",
        "-q",
        "--checkpoint",
        s(&ck),
        "--device",
        "cpu",
        "--out",
        s(&ev),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(json(&ev.join("metrics.json"))["config"]["hidden"], 50);
    assert!(
        std::fs::read(train.join("scores.csv")).unwrap()
            == std::fs::read(ev.join("scores.csv")).unwrap()
    );

    // an expectation the checkpoint does not meet
    let out = precious_out(dir.path());
    let before = snapshot(&out);
    let o = run(&[
        "eval",
        "--checkpoint",
        s(&ck),
        "--hidden",
        "400",
        "--device",
        "cpu",
        "--out",
        s(&out),
    ]);
    let e = assert_one_line_error(&o, "eval --hidden 400 on a 784-50-20 checkpoint");
    assert!(e.contains("784-50-20") && e.contains("--hidden 400"), "{e}");
    let o = run(&[
        "eval",
        "--checkpoint",
        s(&ck),
        "--latent",
        "8",
        "--device",
        "cpu",
        "--out",
        s(&out),
    ]);
    assert_one_line_error(&o, "eval --latent 8");
    let png = dir.path().join("g.png");
    grey_png(&png, 28, 28, 0);
    let csv_out = out.join("scores.csv");
    let o = run(&[
        "score",
        "--checkpoint",
        s(&ck),
        "--hidden",
        "400",
        "--device",
        "cpu",
        "--out",
        s(&csv_out),
        s(&png),
    ]);
    assert_one_line_error(&o, "score --hidden 400");
    assert_eq!(snapshot(&out), before);
}

#[test]
fn score_png_folder_and_idx() {
    let dir = tempfile::tempdir().unwrap();
    let ck = dir.path().join("m.safetensors");
    fresh_checkpoint(&ck, Dims::MNIST);
    let grey = dir.path().join("grey.png");
    grey_png(&grey, 28, 28, 128);
    let folder = dir.path().join("pngs");
    std::fs::create_dir(&folder).unwrap();
    grey_png(&folder.join("b.png"), 28, 28, 0);
    grey_png(&folder.join("a.png"), 28, 28, 255);
    std::fs::write(folder.join("notes.txt"), b"ignored").unwrap();
    let idx_path = dir.path().join("three.idx");
    let images = Images {
        n: 3,
        rows: 28,
        cols: 28,
        pixels: (0..3 * PIXELS).map(|i| (i % 256) as u8).collect(),
    };
    idx::write_images(&idx_path, &images, false).unwrap();

    let out = dir.path().join("res").join("scores.csv");
    let o = run(&[
        "score",
        "--checkpoint",
        s(&ck),
        "--device",
        "cpu",
        "--out",
        s(&out),
        s(&grey),
        s(&folder),
        s(&idx_path),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains("scored 6 images"));
    let text = std::fs::read_to_string(&out).unwrap();
    assert!(text.starts_with("name,score_neg_elbo\n"), "{text}");
    let rows = csv_rows(&out);
    let names: Vec<&str> = rows.iter().map(|r| r[0].as_str()).collect();
    let want = [
        grey.display().to_string(),
        folder.join("a.png").display().to_string(),
        folder.join("b.png").display().to_string(),
        format!("{}[0]", idx_path.display()),
        format!("{}[1]", idx_path.display()),
        format!("{}[2]", idx_path.display()),
    ];
    assert_eq!(names, want);
    let scores: Vec<f64> = rows.iter().map(|r| r[1].parse().unwrap()).collect();
    assert!(
        scores.iter().all(|v| v.is_finite() && *v > 0.0),
        "{scores:?}"
    );
    // black and white images are far apart under an untrained decoder (σ ≈ 0.5 everywhere
    // gives ~ln 2 per pixel either way, so just check they are distinct and sane)
    assert!(scores[1] != scores[2]);

    // deterministic: the same inputs give the same file
    let out2 = dir.path().join("again.csv");
    let o = run(&[
        "score",
        "-q",
        "--checkpoint",
        s(&ck),
        "--device",
        "cpu",
        "--out",
        s(&out2),
        s(&grey),
        s(&folder),
        s(&idx_path),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(o.stdout.is_empty());
    assert_eq!(std::fs::read(&out).unwrap(), std::fs::read(&out2).unwrap());

    // a single grey PNG alone scores like the first row (same position, same ε row)
    let out3 = dir.path().join("one.csv");
    let o = run(&[
        "score",
        "-q",
        "--checkpoint",
        s(&ck),
        "--device",
        "cpu",
        "--out",
        s(&out3),
        s(&grey),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(csv_rows(&out3), vec![rows[0].clone()]);
}

// ---------------------------------------------------------------- bad inputs

/// Run `eval` with `ck` into an output folder that already holds files; it must
/// fail with one line and leave that folder exactly as it was.
fn eval_fails(root: &Path, ck: &Path, extra: &[&str], what: &str) -> String {
    let out = precious_out(root);
    let before = snapshot(&out);
    let mut args = vec![
        "eval",
        "--checkpoint",
        s(ck),
        "--device",
        "cpu",
        "--out",
        s(&out),
    ];
    args.extend_from_slice(extra);
    let e = assert_one_line_error(&run(&args), what);
    assert_eq!(snapshot(&out), before, "{what}: output folder changed");
    e
}

#[test]
fn eval_missing_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let e = eval_fails(
        dir.path(),
        &dir.path().join("nope.safetensors"),
        &[],
        "missing checkpoint",
    );
    assert!(e.contains("nope.safetensors"), "{e}");
}

#[test]
fn eval_corrupted_checkpoints() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.safetensors");
    fresh_checkpoint(&good, Dims::MNIST);
    let bytes = std::fs::read(&good).unwrap();
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("truncated tail", bytes[..bytes.len() - 100].to_vec()),
        ("truncated header", bytes[..200].to_vec()),
        ("8 bytes", bytes[..8].to_vec()),
        ("empty", Vec::new()),
        // deterministic pseudo-random bytes (an LCG), not a safetensors file
        (
            "random bytes",
            (0..4096u64)
                .scan(0x1234_5678u64, |x, _| {
                    *x = x
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    Some((*x >> 56) as u8)
                })
                .collect(),
        ),
        ("text", b"this is not a checkpoint\n".to_vec()),
    ];
    for (what, b) in cases {
        let p = dir
            .path()
            .join(format!("{}.safetensors", what.replace(' ', "_")));
        std::fs::write(&p, b).unwrap();
        let e = eval_fails(dir.path(), &p, &[], what);
        assert!(e.contains(&p.display().to_string()), "{what}: {e}");
    }
    // the good one is fine (sanity: the failures above are about the bytes)
    let o = run(&[
        "eval",
        "-q",
        "--checkpoint",
        s(&good),
        "--device",
        "cpu",
        "--train-limit",
        "50",
        "--out",
        s(&dir.path().join("ok")),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
}

#[test]
fn eval_checkpoint_with_wrong_shapes() {
    let dir = tempfile::tempdir().unwrap();
    // a valid checkpoint, but of a model for 100-pixel inputs
    let small = dir.path().join("small.safetensors");
    fresh_checkpoint(
        &small,
        Dims {
            d: 100,
            h: 30,
            l: 4,
        },
    );
    let e = eval_fails(dir.path(), &small, &[], "100-pixel model");
    assert!(e.contains("100"), "{e}");

    // fc3.weight stored transposed ([h, l] → [l, h]): same bytes, wrong shape
    let lay = Layout::new(Dims::MNIST);
    let params = lay.init(5);
    let raw: &[u8] = bytemuck::cast_slice(&params);
    let mut views = Vec::new();
    for t in &lay.tensors {
        let mut shape = t.shape.clone();
        if t.name == "fc3.weight" {
            shape.reverse();
        }
        views.push((
            t.name,
            TensorView::new(
                Dtype::F32,
                shape,
                &raw[t.offset * 4..(t.offset + t.len()) * 4],
            )
            .unwrap(),
        ));
    }
    let bad = dir.path().join("transposed.safetensors");
    std::fs::write(&bad, safetensors::serialize(views, None).unwrap()).unwrap();
    let e = eval_fails(dir.path(), &bad, &[], "transposed fc3.weight");
    assert!(e.contains("fc3.weight"), "{e}");

    // an f64 tensor
    let mut views = Vec::new();
    let wide: Vec<f64> = params.iter().map(|&x| x as f64).collect();
    let wide_raw: &[u8] = bytemuck::cast_slice(&wide);
    for t in &lay.tensors {
        let (dt, data) = if t.name == "fc1.bias" {
            (
                Dtype::F64,
                &wide_raw[t.offset * 8..(t.offset + t.len()) * 8],
            )
        } else {
            (Dtype::F32, &raw[t.offset * 4..(t.offset + t.len()) * 4])
        };
        views.push((t.name, TensorView::new(dt, t.shape.clone(), data).unwrap()));
    }
    let bad = dir.path().join("f64.safetensors");
    std::fs::write(&bad, safetensors::serialize(views, None).unwrap()).unwrap();
    let e = eval_fails(dir.path(), &bad, &[], "f64 tensor");
    assert!(e.contains("fc1.bias"), "{e}");
}

#[test]
fn eval_bad_data_and_digit() {
    let dir = tempfile::tempdir().unwrap();
    let ck = dir.path().join("m.safetensors");
    fresh_checkpoint(&ck, Dims::MNIST);
    let e = eval_fails(
        dir.path(),
        &ck,
        &["--holdout-digit", "10"],
        "eval --holdout-digit 10",
    );
    assert!(e.contains("holdout-digit"), "{e}");
    let e = eval_fails(
        dir.path(),
        &ck,
        &["--data", s(&dir.path().join("no-data"))],
        "eval --data missing",
    );
    assert!(e.contains("no-data"), "{e}");
    eval_fails(
        dir.path(),
        &ck,
        &["--score-batch", "0"],
        "eval --score-batch 0",
    );
    eval_fails(
        dir.path(),
        &ck,
        &["--train-limit", "0"],
        "eval --train-limit 0",
    );
    let o = run(&["eval", "--device", "cpu"]);
    assert_parse_error(&o, "eval without --checkpoint");
}

#[test]
fn score_bad_inputs() {
    let dir = tempfile::tempdir().unwrap();
    let ck = dir.path().join("m.safetensors");
    fresh_checkpoint(&ck, Dims::MNIST);
    let good = dir.path().join("good.png");
    grey_png(&good, 28, 28, 128);
    let wrong_size = dir.path().join("wide.png");
    grey_png(&wrong_size, 32, 30, 128);
    let not_png = dir.path().join("fake.png");
    std::fs::write(&not_png, b"GIF89a not a png at all").unwrap();
    let text = dir.path().join("notes.txt");
    std::fs::write(&text, b"hello\n").unwrap();
    let empty = dir.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let missing = dir.path().join("missing.png");
    let bad_idx = dir.path().join("labels.idx.gz");
    idx::write_labels(&bad_idx, &[1, 2, 3], true).unwrap();
    let corrupt_ck = dir.path().join("corrupt.safetensors");
    let bytes = std::fs::read(&ck).unwrap();
    std::fs::write(&corrupt_ck, &bytes[..bytes.len() / 2]).unwrap();

    let out = precious_out(dir.path());
    let target = out.join("scores.csv");
    let before = snapshot(&out);
    let cases: Vec<(&str, &Path, Vec<&Path>, &str)> = vec![
        ("missing input", &ck, vec![&good, &missing], "missing.png"),
        ("PNG 32x30", &ck, vec![&wrong_size], "32x30"),
        ("not a PNG", &ck, vec![&good, &not_png], "fake.png"),
        ("text file", &ck, vec![&text], "notes.txt"),
        ("empty folder", &ck, vec![&empty], "empty"),
        ("IDX label file", &ck, vec![&bad_idx], "labels.idx.gz"),
        ("missing checkpoint", &missing, vec![&good], "missing.png"),
        (
            "corrupt checkpoint",
            &corrupt_ck,
            vec![&good],
            "corrupt.safetensors",
        ),
    ];
    for (what, ckp, inputs, needle) in cases {
        let mut args = vec![
            "score",
            "--checkpoint",
            s(ckp),
            "--device",
            "cpu",
            "--out",
            s(&target),
        ];
        args.extend(inputs.iter().map(|p| s(p)));
        let e = assert_one_line_error(&run(&args), what);
        assert!(e.contains(needle), "{what}: {e}");
        assert_eq!(snapshot(&out), before, "{what}: output changed");
    }
    let o = run(&[
        "score",
        "--checkpoint",
        s(&ck),
        "--device",
        "cpu",
        "--out",
        s(&target),
    ]);
    assert_parse_error(&o, "score without inputs");
    assert_eq!(snapshot(&out), before);
}

#[test]
fn bad_training_flags() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let data = mnist();
    let cases: [(&[&str], &str); 6] = [
        (&["--batch-size", "0"], "batch-size"),
        (&["--lr=-1"], "lr"),
        (&["--lr", "0"], "lr"),
        (&["--holdout-digit", "10"], "holdout-digit"),
        (&["--epochs", "0"], "epochs"),
        (&["--train-limit", "0"], "train-limit"),
    ];
    for (flags, needle) in cases {
        for sub in [None, Some("train")] {
            let mut args: Vec<&str> = sub.into_iter().collect();
            args.extend_from_slice(&["--device", "cpu", "--data", s(&data), "--out", s(&out)]);
            args.extend_from_slice(flags);
            let what = format!("{args:?}");
            let e = assert_one_line_error(&run(&args), &what);
            assert!(e.contains(needle), "{what}: {e}");
            assert!(!out.exists(), "{what}: created the output folder");
        }
    }
    // `--lr -1`: clap reads `-1` as an unknown flag; a parse error (exit 2), not a panic
    let o = run(&["--device", "cpu", "--out", s(&out), "--lr", "-1"]);
    assert_eq!(o.status.code(), Some(2));
    assert_parse_error(&o, "--lr -1");
    let o = run(&[
        "--device",
        "cpu",
        "--out",
        s(&out),
        "--holdout-digit",
        "300",
    ]);
    assert_parse_error(&o, "--holdout-digit 300");
    let o = run(&["--device", "cpu", "--out", s(&out), "--batch-size", "many"]);
    assert_parse_error(&o, "--batch-size many");
    assert!(!out.exists());
}

/// The environment switches (`src/knobs.rs`) with values vae-ood would not
/// understand: one-line errors naming the switch, before anything is written.
#[test]
fn bad_environment_switches() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let cases = [
        ("VAE_OOD_CPU_DENSE", "yes"),
        ("VAE_OOD_CPU_UNFUSED", "2"),
        ("VAE_OOD_NO_SUBGROUPS", "true"),
        ("VAE_OOD_GPU_CHUNK", "-1"),
        ("VAE_OOD_SPLIT_TARGET", "0"),
        ("VAE_OOD_GPU_TRUSTED", "yes"),
        ("VAE_OOD_GPU_UNFUSED", "pair"),
        ("VAE_OOD_GPU_PREFETCH", "on"),
        ("VAE_OOD_GPU_UNFUSED", "triples"),
        ("VAE_OOD_GPU_UNFUSED", "gathers"),
        // (Adam in the triple is opt-in now: VAE_OOD_GPU_TRIPLE_ADAM=1)
        ("VAE_OOD_GPU_UNFUSED", "adam"),
        ("VAE_OOD_GPU_TRIPLE_ADAM", "yes"),
        ("VAE_OOD_GPU_ONES_COLUMN", "on"),
        ("VAE_OOD_GPU_LATENT_THREADS", "300"),
        ("VAE_OOD_GPU_LATENT_THREADS", "2048"),
        ("VAE_OOD_GPU_COOP", "yes"),
        ("VAE_OOD_GPU_COOP_STEP", "48"),
        ("VAE_OOD_GPU_DOUBLE_TILES", "2"),
        ("VAE_OOD_GPU_BCE_EPILOGUE", "on"),
        ("VAE_OOD_GPU_BCE_SPLIT", "split"),
        ("VAE_OOD_GPU_LATENT_FC1", "yes"),
        ("VAE_OOD_GPU_LATENT_PAIR", "pair"),
        ("VAE_OOD_GPU_TAIL_FC1", "tail"),
        ("VAE_OOD_GPU_EARLY_READS", "early"),
        ("VAE_OOD_GPU_PERSISTENT", "0"),
        ("VAE_OOD_GPU_PERSISTENT", "automatic"),
        ("VAE_OOD_GPU_PERSISTENT_PHASES", "1"),
    ];
    // a one-epoch CPU run on 128 images, quiet
    let run = [
        "--device",
        "cpu",
        "--epochs",
        "1",
        "--train-limit",
        "128",
        "-q",
    ];
    // that run with these switches set
    let with = |envs: &[(&str, &str)]| {
        bin()
            .envs(envs.iter().copied())
            .args(run)
            .args(["--out", s(&out)])
            .output()
            .unwrap()
    };
    for (name, value) in cases {
        let o = with(&[(name, value)]);
        let what = format!("{name}={value}");
        let e = assert_one_line_error(&o, &what);
        assert!(e.contains(name) && e.contains(value), "{what}: {e}");
        assert!(!out.exists(), "{what}: created the output folder");
    }
    // understood values run
    let runs = |envs: &[(&str, &str)]| {
        let o = with(envs);
        assert!(o.status.success(), "{envs:?}: {}", stderr(&o));
    };
    runs(&[
        ("VAE_OOD_CPU_DENSE", "1"),
        ("VAE_OOD_CPU_UNFUSED", "0"),
        ("VAE_OOD_GPU_CHUNK", "64"),
        ("VAE_OOD_GPU_UNFUSED", "reduces"),
        ("VAE_OOD_GPU_TRUSTED", "loops"),
        ("VAE_OOD_GPU_PREFETCH", "0"),
        ("VAE_OOD_GPU_TRIPLE_ADAM", "1"),
        ("VAE_OOD_GPU_ONES_COLUMN", "1"),
        ("VAE_OOD_GPU_LATENT_THREADS", "512"),
        ("VAE_OOD_GPU_COOP", "1"),
        ("VAE_OOD_GPU_COOP_STEP", "128"),
        ("VAE_OOD_GPU_DOUBLE_TILES", "1"),
        ("VAE_OOD_GPU_BCE_EPILOGUE", "1"),
        ("VAE_OOD_GPU_EARLY_READS", "1"),
        ("VAE_OOD_GPU_PERSISTENT", "auto"),
        ("VAE_OOD_GPU_PERSISTENT_PHASES", "14"),
    ]);
    // (the persistent step's other word: the dispatches, as when unset)
    runs(&[("VAE_OOD_GPU_PERSISTENT", "off")]);
    // `devices` describes every adapter whatever VAE_OOD_GPU_COOP says (it is an
    // error only where a device is opened): tensor cores offered or not
    let o = bin()
        .env("VAE_OOD_GPU_COOP", "1")
        .arg("devices")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let listed = String::from_utf8_lossy(&o.stdout);
    for line in listed.lines().filter(|l| !l.starts_with("no GPU")) {
        if line.starts_with("Gl\t") {
            assert!(line.contains("not used"), "{line}");
        } else {
            assert!(line.contains("tensor cores"), "{line}");
            // and how the last K shares read the others' partial sums
            assert!(line.contains("partial sums"), "{line}");
        }
    }
}

/// wgpu's OpenGL backend is never used (untested there, and it once trained
/// silently wrong: `gpu::BACKENDS`): asking for it alone is a one-line error that
/// writes nothing;
/// and with Vulkan's drivers hidden, where the GL adapter (Mesa's llvmpipe on CI)
/// is all wgpu finds, `--device gpu` finds no adapter instead of training on it,
/// and `auto` runs the CPU backend.
#[test]
fn the_opengl_backend_is_not_used() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let run = [
        "--epochs",
        "1",
        "--train-limit",
        "128",
        "-q",
        "--out",
        s(&out),
    ];
    for device in ["gpu", "auto"] {
        let o = bin()
            .env("WGPU_BACKEND", "gl")
            .args(["--device", device])
            .args(run)
            .output()
            .unwrap();
        let e = assert_one_line_error(&o, &format!("WGPU_BACKEND=gl --device {device}"));
        assert!(e.contains("OpenGL") && e.contains("\"gl\""), "{e}");
        assert!(
            !out.exists(),
            "--device {device}: created the output folder"
        );
    }
    // no Vulkan driver: the loader finds no ICD file (older loaders read
    // VK_ICD_FILENAMES, newer VK_DRIVER_FILES)
    let no_vulkan = |c: &mut Command| {
        c.env("VK_ICD_FILENAMES", "/nonexistent/icd.json")
            .env("VK_DRIVER_FILES", "/nonexistent/icd.json")
            .env_remove("WGPU_BACKEND")
            .env_remove("WGPU_ADAPTER_NAME");
    };
    let mut c = bin();
    no_vulkan(&mut c);
    let o = c.arg("devices").output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let listed = String::from_utf8_lossy(&o.stdout).into_owned();
    for line in listed.lines() {
        assert!(!line.starts_with("Vulkan"), "Vulkan hidden, yet: {line}");
        if line.starts_with("Gl\t") {
            assert!(line.contains("not used"), "{line}");
        }
    }
    let mut c = bin();
    no_vulkan(&mut c);
    let o = c.args(["--device", "gpu"]).args(run).output().unwrap();
    let e = assert_one_line_error(&o, "--device gpu without Vulkan");
    assert!(e.contains("no GPU adapter"), "{e} (adapters: {listed})");
    assert!(!out.exists(), "--device gpu: created the output folder");
    let mut c = bin();
    no_vulkan(&mut c);
    let o = c.args(["--device", "auto"]).args(run).output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(out.join("scores.csv").exists());
}
