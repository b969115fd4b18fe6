//! CPU reference kernels: one file per shader, one function per WGSL entry point,
//! same name, same arguments (buffers first, then the parameter struct that the
//! shader receives as its uniform). They are the specification the shaders are
//! tested against and, made fast with a GEMM crate and rayon, the CPU backend.

/// `fn $name(args)` that runs the `#[inline(always)]` body `$body(args)`,
/// compiled a second time with AVX2 enabled and chosen at run time when the CPU has
/// it (the default x86-64 target stops at SSE2). Rust never fuses a·b + c into an
/// FMA on its own, so both copies do the same arithmetic and give the same bits;
/// only the vector width differs.
macro_rules! with_avx2 {
    ($(#[$attr:meta])* $vis:vis fn $name:ident($($arg:ident: $ty:ty),* $(,)?) => $body:ident) => {
        $(#[$attr])*
        $vis fn $name($($arg: $ty),*) {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx2")]
                fn avx2($($arg: $ty),*) {
                    $body($($arg),*)
                }
                if std::arch::is_x86_feature_detected!("avx2") {
                    // SAFETY: the CPU has AVX2 (checked just above).
                    return unsafe { avx2($($arg),*) };
                }
            }
            $body($($arg),*)
        }
    };
}
pub(crate) use with_avx2;

pub mod adam;
pub mod bce;
pub mod gather;
pub mod loss;
pub mod matmul;
pub mod reparam;

pub use adam::{adam, AdamParams};
pub use bce::{bce_logits, BceParams};
pub use gather::{gather_pixels, GatherParams};
pub use loss::{loss_reduce, LossParams, LOSS_ELBO, LOSS_IWAE, NO_SLOT};
pub use matmul::{matmul, round_to_f16, MatmulParams};
pub use reparam::{reparam_backward, reparam_forward, ReparamParams};
