//! Micro-timings of the sparse first-layer kernels against the dense GEMM on one
//! MNIST batch (a kernel experiment, not part of the training path).
use std::time::Instant;
use vae_ood::cpu::{self, MatmulParams};
use vae_ood::cpu_sparse::{self, Csr};
use vae_ood::dataset;

fn time<F: FnMut()>(name: &str, reps: usize, mut f: F) {
    f();
    let t = Instant::now();
    for _ in 0..reps {
        f();
    }
    println!(
        "{name:<28} {:>9.1} µs",
        t.elapsed().as_secs_f64() * 1e6 / reps as f64
    );
}

fn main() -> anyhow::Result<()> {
    let dir = dataset::resolve_data_dir(std::path::Path::new("data/mnist"));
    let imgs = vae_ood::idx::read_images(&dir.join("train-images-idx3-ubyte.gz"))?;
    let (b, d, h) = (128, 784, 400);
    let x: Vec<f32> = imgs.pixels[..b * d]
        .iter()
        .map(|&v| v as f32 / 255.0)
        .collect();
    let w: Vec<f32> = (0..h * d)
        .map(|i| ((i * 7919) % 1000) as f32 * 1e-4 - 0.05)
        .collect();
    let mut csr = Csr::default();
    csr.fill_from_dense(&x, b, d);
    println!("density {:.3}", csr.density());
    time("csr build", 200, || csr.fill_from_dense(&x, b, d));
    let mut wt = vec![0.0f32; d * h];
    time("transpose (1 thread)", 200, || {
        // SAFETY: wt holds d·h elements and nothing else touches it
        unsafe { cpu_sparse::transpose_band_into(wt.as_mut_ptr(), wt.len(), &w, h, d, 0, h) }
    });
    let mut c = vec![0.0f32; b * h];
    time("linear_sparse (1 thread)", 200, || {
        cpu_sparse::linear_sparse(&mut c, &csr, 0, b, &wt, h, &[], false)
    });
    let mut c2 = vec![0.0f32; b * h];
    let p = MatmulParams {
        flags: 0,
        ..MatmulParams::linear(b, d, h, 0, 0, false)
    };
    time("dense gemm (1 thread)", 200, || {
        cpu::matmul(&mut c2, &x, &w, &w, &p)
    });
    let maxdiff = c
        .iter()
        .zip(&c2)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    println!("max |sparse - dense| {maxdiff:e}");
    let dy: Vec<f32> = (0..b * h)
        .map(|i| ((i * 31) % 97) as f32 * 1e-3 - 0.05)
        .collect();
    let mut xt = Csr::default();
    csr.transpose_into(&mut xt);
    time("csr transpose", 200, || csr.transpose_into(&mut xt));
    let mut dw = vec![0.0f32; h * d];
    time("weight_grad_sparse (1 thr)", 200, || {
        cpu_sparse::weight_grad_sparse(&mut dw, &dy, h, &xt, 0, h)
    });
    let mut dw2 = vec![0.0f32; h * d];
    let q = MatmulParams {
        flags: 0,
        ..MatmulParams::linear_backward_weight(b, d, h, 0, 0)
    };
    time("dense dW gemm (1 thread)", 200, || {
        cpu::matmul(&mut dw2, &dy, &x, &x, &q)
    });
    let maxdiff = dw
        .iter()
        .zip(&dw2)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    println!("max |sparse - dense| dW {maxdiff:e}");
    let logits: Vec<f32> = (0..b * d)
        .map(|i| ((i * 7919) % 2000) as f32 * 0.01 - 10.0)
        .collect();
    let mut l2 = logits.clone();
    let mut bce = vec![0.0f32; b];
    let bp = cpu::BceParams {
        rows: b as u32,
        d: d as u32,
        draws: 1,
        write_grad: 1,
    };
    time("bce_logits (1 thread)", 200, || {
        l2.copy_from_slice(&logits);
        cpu::bce_logits(&mut bce, &mut l2, &x, &bp)
    });
    time("copy only", 200, || l2.copy_from_slice(&logits));
    Ok(())
}
