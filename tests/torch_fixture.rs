//! Against PyTorch: `tools/torch_reference.py` ran the seed's model (float64) on a
//! tiny fixed model and batch with fixed ε and recorded the per-image loss, every
//! gradient and the parameters after each of 3 Adam steps in
//! tests/fixtures/torch_step.json. The same steps run here on every backend.

mod common;

use common::*;
use serde_json::Value;
use vae_ood::model::{Dims, Layout};
use vae_ood::plan::{AdamConfig, Buf};

fn floats(v: &Value) -> Vec<f32> {
    v.as_array()
        .expect("array")
        .iter()
        .map(|x| x.as_f64().expect("number") as f32)
        .collect()
}

/// A name → values map in PyTorch layout, into our flat buffer.
fn flat(lay: &Layout, m: &Value) -> Vec<f32> {
    let mut p = vec![f32::NAN; lay.total];
    for t in &lay.tensors {
        let v = floats(&m[t.name]);
        assert_eq!(v.len(), t.len(), "{}", t.name);
        p[t.range()].copy_from_slice(&v);
    }
    p
}

#[test]
fn matches_pytorch_loss_gradients_and_adam_steps() {
    let f: Value = serde_json::from_str(include_str!("fixtures/torch_step.json")).unwrap();
    let dm = &f["dims"];
    let u = |k: &str| dm[k].as_u64().unwrap() as usize;
    let dims = Dims {
        d: u("d"),
        h: u("h"),
        l: u("l"),
    };
    let b = u("b");
    let lay = Layout::new(dims);
    for t in &lay.tensors {
        let shape: Vec<usize> = f["shapes"][t.name]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap() as usize)
            .collect();
        assert_eq!(shape, t.shape, "PyTorch shape of {}", t.name);
    }
    let a = &f["adam"];
    let adam = AdamConfig {
        lr: a["lr"].as_f64().unwrap() as f32,
        beta1: a["beta1"].as_f64().unwrap() as f32,
        beta2: a["beta2"].as_f64().unwrap() as f32,
        eps: a["eps"].as_f64().unwrap() as f32,
    };
    let steps = a["steps"].as_u64().unwrap() as usize;
    for mut be in all_backends(&[], 1, tiny_sizes(dims, b)) {
        let desc = be.describe();
        be.write(Buf::Params, 0, &flat(&lay, &f["params"])).unwrap();
        be.write(Buf::AdamM, 0, &vec![0.0; lay.total]).unwrap();
        be.write(Buf::AdamV, 0, &vec![0.0; lay.total]).unwrap();
        be.write(Buf::X, 0, &floats(&f["x"])).unwrap();
        be.write(Buf::Eps, 0, &floats(&f["eps"])).unwrap();
        for s in 0..steps {
            be.run(&step_ops_given(dims, b, Some((adam, s as u64 + 1))))
                .unwrap();
            let loss = be.read(Buf::SampleLoss, 0..b).unwrap();
            if s == 0 {
                // f32 against float64: per-image losses ≈ 9 nats summed over 13 pixels
                assert_close(
                    &format!("loss per image on {desc}"),
                    &loss,
                    &floats(&f["loss_per_sample"]),
                    1e-5,
                    1e-5,
                );
                let z = be.read(Buf::Z, 0..b * dims.l).unwrap();
                assert_close(&format!("z on {desc}"), &z, &floats(&f["z"]), 1e-6, 1e-5);
            }
            let total: f64 = loss.iter().map(|&v| v as f64).sum();
            let want = f["loss_per_step"][s].as_f64().unwrap();
            assert!(
                (total - want).abs() < 1e-4,
                "step {s} loss {total} vs PyTorch {want} on {desc}"
            );
            // gradients of the summed loss: f32 vs float64, O(1) values
            let g = be.read(Buf::Grads, 0..lay.total).unwrap();
            let gw = flat(&lay, &f["grads_per_step"][s]);
            for t in &lay.tensors {
                assert_close(
                    &format!("step {s} grad {} on {desc}", t.name),
                    &g[t.range()],
                    &gw[t.range()],
                    1e-5,
                    1e-4,
                );
            }
            // parameters after Adam: |p| ≤ 0.5, updates ≈ lr; f32 rounding ≈ 3e-8
            let p = be.read(Buf::Params, 0..lay.total).unwrap();
            let pw = flat(&lay, &f["params_after_step"][s]);
            assert_close(
                &format!("params after step {} on {desc}", s + 1),
                &p,
                &pw,
                1e-6,
                1e-6,
            );
        }
    }
}
