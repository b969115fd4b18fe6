//! The CPU backend allocates nothing per step of its own: after one warm-up run
//! (which sizes its scratch buffers), running a whole training epoch's op list —
//! fusions and the sparse first layer included — allocates only inside the gemm
//! crate, which takes its packing buffers from the heap on every call (at most two
//! per call; its API has no way to pass them in). Counted with a global allocator
//! that counts, on this test's thread and rayon's workers alike.

mod common;

use common::*;
use rand::Rng;
use std::alloc::{GlobalAlloc, Layout as MemLayout, System};
use std::sync::atomic::{AtomicUsize, Ordering};
use vae_ood::backend::Backend;
use vae_ood::model::{Dims, Layout};
use vae_ood::plan;

struct Counting;
static ALLOCS: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards to the system allocator, only counting calls.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: MemLayout) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: MemLayout) {
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: MemLayout, n: usize) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        unsafe { System.realloc(p, l, n) }
    }
}

#[global_allocator]
static A: Counting = Counting;

#[test]
fn cpu_backend_allocates_nothing_per_step() {
    let mut rng = fresh_rng("cpu_backend_allocates_nothing_per_step");
    let dims = Dims::MNIST;
    let lay = Layout::new(dims);
    let (b, n_img, steps) = (64, 300, 16);
    // dense images in the first half, ~80 % zero bytes in the second, so the sparse
    // first layer runs for some batches and the GEMM for others
    let half_len = n_img * dims.d / 2;
    let mut store = image_bytes(&mut rng, half_len, 1.0);
    store.extend(image_bytes(&mut rng, n_img * dims.d - half_len, 0.2));
    let sizes = run_sizes(dims, b, 1, steps);
    // even steps draw from the sparse half, odd steps from the dense half
    let half = n_img / 2;
    let idx: Vec<u32> = (0..steps * b)
        .map(|i| {
            let base = if (i / b) % 2 == 0 { half } else { 0 };
            (base + (i * 37) % half) as u32
        })
        .collect();
    let mut be = cpu_backend_ready(&store, &idx, sizes, &lay.init(rng.random()));
    let epoch = |t0: u64| train_steps_ops(dims, b, steps, 1, t0);
    let (first, second) = (epoch(0), epoch(steps as u64));
    be.run(&first).unwrap(); // warm-up: scratch buffers, rayon's threads
    let gemm = &vae_ood::cpu::matmul::GEMM_CALLS;
    let (before, c0) = (ALLOCS.load(Ordering::Relaxed), gemm.load(Ordering::Relaxed));
    be.run(&second).unwrap();
    let (after, c1) = (ALLOCS.load(Ordering::Relaxed), gemm.load(Ordering::Relaxed));
    // two sparse products (fc1 forward and dW) in each of the 4 sparse steps
    assert_eq!(
        be.sparse_runs(),
        2 * steps,
        "sparse products over both epochs"
    );
    // entering rayon's pool once per run (not per step) allocates a few blocks
    const PER_RUN: usize = 4;

    // Exactly: the sparse steps with every product that would go to gemm left out
    // (what remains: gather, the sparse fc1 forward, reparameterisation, BCE, loss,
    // the sparse fc1 dW with its fused Adam, Adam) allocate nothing per step.
    let no_gemm = |ops: &[plan::Op]| -> Vec<plan::Op> {
        let names = plan::TRAIN_STEP_OP_NAMES;
        ops.chunks(names.len())
            .step_by(2) // even steps: the sparse half of the store
            .flat_map(|st| {
                st.iter()
                    .zip(names)
                    .filter(|(op, n)| {
                        !matches!(op, plan::Op::Matmul { .. })
                            || *n == "fc1 fwd"
                            || *n == "fc1 dW+db"
                    })
                    .map(|(op, _)| *op)
                    .collect::<Vec<_>>()
            })
            .collect()
    };
    let (warm, timed) = (no_gemm(&first), no_gemm(&second));
    be.run(&warm).unwrap();
    let (b0, g0) = (ALLOCS.load(Ordering::Relaxed), gemm.load(Ordering::Relaxed));
    be.run(&timed).unwrap();
    let (b1, g1) = (ALLOCS.load(Ordering::Relaxed), gemm.load(Ordering::Relaxed));
    assert_eq!(g1, g0, "a product went to gemm");
    eprintln!(
        "{} allocations in {} steps without gemm",
        b1 - b0,
        steps / 2
    );
    assert!(
        b1 - b0 <= PER_RUN,
        "{} allocations in {} steps without gemm",
        b1 - b0,
        steps / 2
    );

    let (allocs, calls) = (after - before, c1 - c0);
    eprintln!("{allocs} allocations, {calls} gemm calls in {steps} steps");
    assert!(calls > 0);
    assert!(
        allocs <= 2 * calls + PER_RUN,
        "{allocs} heap allocations during {steps} training steps with {calls} gemm calls"
    );
}
