//! Which ops of a list the CPU backend may fuse: the parameters each op reads and
//! the gradients each weight-gradient product writes, and whether the step's Adam
//! can run right after a weight gradient.

use crate::cpu::{self, AdamParams, MatmulParams};
use crate::plan::{Buf, Op};
use std::ops::Range;

/// The parameter ranges a dW + db product writes: the weight rows and the bias.
pub(super) fn grad_ranges(p: &MatmulParams) -> [Range<usize>; 2] {
    let (c_off, e_off, m, n) = (
        p.c_off as usize,
        p.e_off as usize,
        p.m as usize,
        p.n as usize,
    );
    [c_off..c_off + m * n, e_off..e_off + m]
}

/// The ranges of Params an op reads (only matmuls read parameters; `0..0` where
/// an operand is not Params).
pub(super) fn param_reads(op: &Op) -> [Range<usize>; 3] {
    let mut out = [0..0, 0..0, 0..0];
    if let Op::Matmul { a, b, e, p, .. } = *op {
        let last = |off: u32, si: u32, sp: u32, rows: u32, cols: u32| {
            off as usize
                + (rows.max(1) - 1) as usize * si as usize
                + (cols.max(1) - 1) as usize * sp as usize
        };
        if a == Buf::Params {
            out[0] = p.a_off as usize..last(p.a_off, p.a_si, p.a_sp, p.m, p.k) + 1;
        }
        if b == Buf::Params {
            out[1] = p.b_off as usize..last(p.b_off, p.b_sp, p.b_sj, p.k, p.n) + 1;
        }
        if e == Buf::Params && p.flags & (cpu::matmul::MM_BIAS | cpu::matmul::MM_MASK) != 0 {
            out[2] = p.e_off as usize..last(p.e_off, p.e_si, 1, p.m, p.n) + 1;
        }
    }
    out
}

pub(super) fn overlaps(a: &Range<usize>, b: &Range<usize>) -> bool {
    a.start < b.end && b.start < a.end
}

/// If `ops[i]` is a dense dW + db product into Grads whose Adam step can run right
/// after it, that step's parameters.
pub(super) fn fusable_adam(ops: &[Op], i: usize) -> Option<AdamParams> {
    let Op::Matmul {
        c: Buf::Grads, p, ..
    } = ops[i]
    else {
        return None;
    };
    if p.flags != cpu::matmul::MM_BIASGRAD || p.c_si != p.n {
        return None;
    }
    let mine = grad_ranges(&p);
    for op in &ops[i + 1..] {
        match op {
            Op::Adam(ap) => {
                let n = ap.n as usize;
                return mine.iter().all(|r| r.end <= n).then_some(*ap);
            }
            // another write to these gradients, or a read of these parameters,
            // before the Adam step: not fusable
            Op::Matmul {
                c: Buf::Grads,
                p: q,
                ..
            } if grad_ranges(q)
                .iter()
                .any(|r| mine.iter().any(|m| overlaps(r, m))) =>
            {
                return None
            }
            _ if param_reads(op)
                .iter()
                .any(|r| mine.iter().any(|m| overlaps(r, m))) =>
            {
                return None
            }
            _ => {}
        }
    }
    None
}
