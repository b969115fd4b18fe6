//! vae-ood: a variational autoencoder trained in WGSL compute shaders, used to flag
//! out-of-distribution images. See README.md.

pub mod backend;
pub mod bench;
pub mod checkpoint;
pub mod cpu;
pub mod cpu_backend;
pub mod cpu_sparse;
pub mod dataset;
pub mod evaluate;
pub mod fsutil;
pub mod gpu;
pub mod idx;
pub mod images;
pub mod knobs;
pub mod metrics;
pub mod model;
pub mod plan;
pub mod plot;
pub mod report;
pub mod rng;
pub mod train;
