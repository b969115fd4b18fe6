//! CPU reference kernels: one file per shader, one function per WGSL entry point,
//! same name, same arguments (buffers first, then the parameter struct that the
//! shader receives as its uniform). They are the specification the shaders are
//! tested against and, made fast with a GEMM crate and rayon, the CPU backend.

pub mod adam;
pub mod bce;
pub mod gather;
pub mod loss;
pub mod matmul;
pub mod reparam;

pub use adam::{adam, AdamParams};
pub use bce::{bce_logits, BceParams};
pub use gather::{gather_pixels, GatherParams};
pub use loss::{loss_reduce, LossParams, LOSS_ELBO, LOSS_IWAE};
pub use matmul::{matmul, MatmulParams};
pub use reparam::{reparam_backward, reparam_forward, ReparamParams};
