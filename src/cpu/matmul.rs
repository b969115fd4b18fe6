//! CPU twin of `shaders/matmul.wgsl`: one strided matmul with a fused epilogue,
//! used for every linear layer forward (X·Wᵀ + b, ReLU), backward to the input
//! (dY·W ⊙ [h > 0]) and backward to the weight (dYᵀ·X).

use bytemuck::{Pod, Zeroable};

/// Epilogue: add `e[e_off + j]` (the bias) to every row.
pub const MM_BIAS: u32 = 1;
/// Epilogue: ReLU.
pub const MM_RELU: u32 = 2;
/// Epilogue: multiply by the mask `e[e_off + i*e_si + j] > 0` (ReLU backward).
pub const MM_MASK: u32 = 4;
/// Also write the row sums of A, `c[e_off + i] = Σ_p A(i, p)`: the bias gradient
/// computed alongside the weight gradient dW = dYᵀ·X (A = dYᵀ), in the same kernel.
pub const MM_BIASGRAD: u32 = 8;

/// How many times [`matmul`] has called the gemm crate (which allocates its packing
/// buffers on every call: the only heap allocations of a CPU training step, see
/// `tests/alloc.rs`).
pub static GEMM_CALLS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// C (m, n) = A (m, k) · B (k, n) with arbitrary strides, all offsets in elements:
/// A(i, p) = a[a_off + i*a_si + p*a_sp], B(p, j) = b[b_off + p*b_sp + j*b_sj],
/// C(i, j) = c[c_off + i*c_si + j].
#[repr(C)]
#[derive(Debug, Clone, Copy, Pod, Zeroable, PartialEq, Default)]
pub struct MatmulParams {
    pub m: u32,
    pub n: u32,
    pub k: u32,
    pub flags: u32,
    pub a_off: u32,
    pub a_si: u32,
    pub a_sp: u32,
    pub b_off: u32,
    pub b_sp: u32,
    pub b_sj: u32,
    pub c_off: u32,
    pub c_si: u32,
    pub e_off: u32,
    pub e_si: u32,
    /// GPU only: K is split over this many workgroups whose partial sums a second
    /// kernel adds up (set by the GPU backend for skinny products; 0 or 1 = no split).
    /// The CPU ignores it: the result is the same product.
    pub splits: u32,
    pub _pad: u32,
}

impl MatmulParams {
    /// out (m, n) = act(inp (m, k) · W (n, k)ᵀ + bias): a linear layer forward.
    /// `inp` row-major at `a_off`; `W` PyTorch layout [n, k] at `w_off`; bias at `b_off`.
    pub fn linear(m: usize, k: usize, n: usize, w_off: usize, b_off: usize, relu: bool) -> Self {
        MatmulParams {
            m: m as u32,
            n: n as u32,
            k: k as u32,
            flags: MM_BIAS | if relu { MM_RELU } else { 0 },
            a_si: k as u32,
            a_sp: 1,
            b_off: w_off as u32,
            b_sp: 1,
            b_sj: k as u32,
            c_si: n as u32,
            e_off: b_off as u32,
            ..Default::default()
        }
    }

    /// dinp (m, k) = dout (m, n) · W (n, k), times the ReLU mask `act (m, k) > 0`
    /// when `masked`: backward of a linear layer to its input.
    pub fn linear_backward_input(m: usize, k: usize, n: usize, w_off: usize, masked: bool) -> Self {
        MatmulParams {
            m: m as u32,
            n: k as u32,
            k: n as u32,
            flags: if masked { MM_MASK } else { 0 },
            a_si: n as u32,
            a_sp: 1,
            b_off: w_off as u32,
            b_sp: k as u32,
            b_sj: 1,
            c_si: k as u32,
            e_si: k as u32,
            ..Default::default()
        }
    }

    /// dW (n, k) = dout (m, n)ᵀ · inp (m, k), written at `w_off` of the gradient
    /// buffer, and db (n) = Σ_rows dout at `b_off`: backward of a linear layer to
    /// its weight and bias.
    pub fn linear_backward_weight(
        m: usize,
        k: usize,
        n: usize,
        w_off: usize,
        b_off: usize,
    ) -> Self {
        MatmulParams {
            m: n as u32,
            n: k as u32,
            k: m as u32,
            flags: MM_BIASGRAD,
            e_off: b_off as u32,
            a_si: 1,
            a_sp: n as u32,
            b_sp: k as u32,
            b_sj: 1,
            c_off: w_off as u32,
            c_si: k as u32,
            ..Default::default()
        }
    }
}

/// c = epilogue(A · B); see [`MatmulParams`]. `e` is the bias (MM_BIAS) or the
/// ReLU mask source (MM_MASK); pass any slice when neither flag is set. With
/// MM_BIASGRAD, also c[e_off + i] = Σ_p A(i, p) (outside the C region).
pub fn matmul(c: &mut [f32], a: &[f32], b: &[f32], e: &[f32], p: &MatmulParams) {
    let (m, n, k) = (p.m as usize, p.n as usize, p.k as usize);
    if m == 0 || n == 0 {
        return;
    }
    if p.flags & MM_BIASGRAD != 0 {
        bias_sums(c, a, p);
    }
    let c_si = p.c_si as usize;
    let c_len = (m - 1) * c_si + n;
    let cs = &mut c[p.c_off as usize..p.c_off as usize + c_len];
    if k == 0 {
        for i in 0..m {
            cs[i * c_si..i * c_si + n].fill(0.0);
        }
    } else {
        // SAFETY: the strided views lie inside `a`, `b` and `cs` (checked below by
        // computing the last element each touches), and `cs` is exclusively borrowed.
        // gemm computes dst = alpha·dst + beta·lhs·rhs; read_dst = false ignores dst.
        let a_last = p.a_off as usize + (m - 1) * p.a_si as usize + (k - 1) * p.a_sp as usize;
        let b_last = p.b_off as usize + (k - 1) * p.b_sp as usize + (n - 1) * p.b_sj as usize;
        assert!(
            a_last < a.len() && b_last < b.len(),
            "matmul operand out of bounds"
        );
        GEMM_CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        unsafe {
            gemm::gemm(
                m,
                n,
                k,
                cs.as_mut_ptr(),
                1,
                c_si as isize,
                false,
                a.as_ptr().add(p.a_off as usize),
                p.a_sp as isize,
                p.a_si as isize,
                b.as_ptr().add(p.b_off as usize),
                p.b_sj as isize,
                p.b_sp as isize,
                0.0,
                1.0,
                false,
                false,
                false,
                gemm::Parallelism::None,
            );
        }
    }
    epilogue(cs, e, p);
}

super::with_avx2! {
    /// The MM_BIASGRAD part: c[e_off + i] = Σ_p A(i, p), summed in order of p.
    pub fn bias_sums(c: &mut [f32], a: &[f32], p: &MatmulParams) => bias_sums_body
}

#[inline(always)]
fn bias_sums_body(c: &mut [f32], a: &[f32], p: &MatmulParams) {
    let (m, a_off, a_si, a_sp) = (
        p.m as usize,
        p.a_off as usize,
        p.a_si as usize,
        p.a_sp as usize,
    );
    let sums = &mut c[p.e_off as usize..p.e_off as usize + m];
    sums.fill(0.0);
    if a_si == 1 {
        // A's rows are columns in memory (A = dYᵀ): add whole contiguous rows of dY,
        // the same additions in the same order as the strided loop below
        for q in 0..p.k as usize {
            let row = &a[a_off + q * a_sp..a_off + q * a_sp + m];
            for (s, v) in sums.iter_mut().zip(row) {
                *s += v;
            }
        }
    } else {
        for (i, s) in sums.iter_mut().enumerate() {
            for q in 0..p.k as usize {
                *s += a[a_off + i * a_si + q * a_sp];
            }
        }
    }
}

super::with_avx2! {
    /// Bias, ReLU and mask on C (cs starts at C(0, 0)).
    fn epilogue(cs: &mut [f32], e: &[f32], p: &MatmulParams) => epilogue_body
}

#[inline(always)]
fn epilogue_body(cs: &mut [f32], e: &[f32], p: &MatmulParams) {
    let (m, n, c_si) = (p.m as usize, p.n as usize, p.c_si as usize);
    if p.flags & (MM_BIAS | MM_RELU | MM_MASK) != 0 {
        let (e_off, e_si) = (p.e_off as usize, p.e_si as usize);
        for i in 0..m {
            let row = &mut cs[i * c_si..i * c_si + n];
            if p.flags & MM_BIAS != 0 {
                for (v, bias) in row.iter_mut().zip(&e[e_off..e_off + n]) {
                    *v += bias;
                }
            }
            if p.flags & MM_RELU != 0 {
                for v in row.iter_mut() {
                    *v = v.max(0.0);
                }
            }
            if p.flags & MM_MASK != 0 {
                let mask = &e[e_off + i * e_si..e_off + i * e_si + n];
                for (v, h) in row.iter_mut().zip(mask) {
                    if *h <= 0.0 {
                        *v = 0.0;
                    }
                }
            }
        }
    }
}

/// Each value rounded to the nearest f16 (ties to even) and back: what the
/// tensor-core walk (`shaders/matmul_walk_coop.wgsl`, `VAE_OOD_GPU_COOP=1`) does
/// to the operands it stages. With it, `matmul` is that walk's CPU twin: a product
/// of two f16 values is exact in f32, so the two differ only in the order of their
/// f32 sums. Values beyond f16's range become ±inf, as on the GPU.
pub fn round_to_f16(v: &mut [f32]) {
    for x in v {
        *x = half::f16::from_f32(*x).to_f32();
    }
}
