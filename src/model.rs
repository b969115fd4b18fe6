//! The VAE's shape and its one flat parameter buffer.
//!
//! All parameters live in one `f32` buffer so that Adam is a single kernel over it
//! (as in llm.c). Each tensor keeps PyTorch's name and layout (`fc1.weight` is
//! `[hidden, input]`, row-major), so a checkpoint maps 1:1 onto the PyTorch module.
//! The order inside the buffer is ours: `fc21` and `fc22` (μ and log σ² heads) sit
//! next to each other so the encoder head is one `[2·latent, hidden]` matmul.

use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

/// Layer sizes: input `d` (784 for MNIST), hidden `h` (400), latent `l` (20).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dims {
    pub d: usize,
    pub h: usize,
    pub l: usize,
}

impl Dims {
    pub const MNIST: Dims = Dims {
        d: 784,
        h: 400,
        l: 20,
    };
}

/// One named tensor inside the flat buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorSpec {
    pub name: &'static str,
    /// PyTorch shape: `[out, in]` for weights, `[out]` for biases.
    pub shape: Vec<usize>,
    /// Offset in elements from the start of the flat buffer.
    pub offset: usize,
    /// `fan_in` of the layer (for PyTorch's default init bound 1/√fan_in).
    pub fan_in: usize,
}

impl TensorSpec {
    pub fn len(&self) -> usize {
        self.shape.iter().product()
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    pub fn range(&self) -> std::ops::Range<usize> {
        self.offset..self.offset + self.len()
    }
}

/// Where every tensor lives in the flat buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    pub dims: Dims,
    pub tensors: Vec<TensorSpec>,
    pub total: usize,
}

/// Offsets of the tensors the kernels address (element offsets into the flat buffer).
#[derive(Debug, Clone, Copy)]
pub struct Offsets {
    /// fc1.weight [h, d], fc1.bias [h]
    pub w1: usize,
    pub b1: usize,
    /// fc21.weight then fc22.weight: together the head weight [2l, h]
    pub w2: usize,
    /// fc21.bias then fc22.bias: together the head bias [2l]
    pub b2: usize,
    /// fc3.weight [h, l], fc3.bias [h]
    pub w3: usize,
    pub b3: usize,
    /// fc4.weight [d, h], fc4.bias [d]
    pub w4: usize,
    pub b4: usize,
}

impl Layout {
    pub fn new(dims: Dims) -> Layout {
        let Dims { d, h, l } = dims;
        // (name, shape, fan_in) in buffer order
        let specs: [(&'static str, Vec<usize>, usize); 10] = [
            ("fc1.weight", vec![h, d], d),
            ("fc1.bias", vec![h], d),
            ("fc21.weight", vec![l, h], h),
            ("fc22.weight", vec![l, h], h),
            ("fc21.bias", vec![l], h),
            ("fc22.bias", vec![l], h),
            ("fc3.weight", vec![h, l], l),
            ("fc3.bias", vec![h], l),
            ("fc4.weight", vec![d, h], h),
            ("fc4.bias", vec![d], h),
        ];
        let mut offset = 0;
        let mut tensors = Vec::new();
        for (name, shape, fan_in) in specs {
            let n: usize = shape.iter().product();
            tensors.push(TensorSpec {
                name,
                shape,
                offset,
                fan_in,
            });
            offset += n;
        }
        Layout {
            dims,
            tensors,
            total: offset,
        }
    }

    pub fn get(&self, name: &str) -> Option<&TensorSpec> {
        self.tensors.iter().find(|t| t.name == name)
    }

    fn off(&self, name: &str) -> usize {
        self.get(name).expect("tensor in layout").offset
    }

    pub fn offsets(&self) -> Offsets {
        Offsets {
            w1: self.off("fc1.weight"),
            b1: self.off("fc1.bias"),
            w2: self.off("fc21.weight"),
            b2: self.off("fc21.bias"),
            w3: self.off("fc3.weight"),
            b3: self.off("fc3.bias"),
            w4: self.off("fc4.weight"),
            b4: self.off("fc4.bias"),
        }
    }

    /// PyTorch's default `nn.Linear` initialisation: weights and biases uniform in
    /// ±1/√fan_in (kaiming_uniform with a=√5 reduces to exactly this bound), drawn
    /// from a ChaCha RNG seeded with `seed`, tensor by tensor in state_dict order.
    pub fn init(&self, seed: u64) -> Vec<f32> {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let mut p = vec![0.0f32; self.total];
        for name in STATE_DICT_ORDER {
            let t = self.get(name).expect("tensor");
            let bound = 1.0 / (t.fan_in as f32).sqrt();
            for v in &mut p[t.range()] {
                *v = rng.random_range(-bound..bound);
            }
        }
        p
    }
}

/// The order of PyTorch's `state_dict()` for the seed's module.
pub const STATE_DICT_ORDER: [&str; 10] = [
    "fc1.weight",
    "fc1.bias",
    "fc21.weight",
    "fc21.bias",
    "fc22.weight",
    "fc22.bias",
    "fc3.weight",
    "fc3.bias",
    "fc4.weight",
    "fc4.bias",
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_matches_pytorch_shapes_and_is_contiguous() {
        let lay = Layout::new(Dims::MNIST);
        assert_eq!(
            lay.total,
            784 * 400 + 400 + 2 * (400 * 20 + 20) + 20 * 400 + 400 + 400 * 784 + 784
        );
        assert_eq!(lay.get("fc1.weight").unwrap().shape, vec![400, 784]);
        assert_eq!(lay.get("fc4.weight").unwrap().shape, vec![784, 400]);
        let o = lay.offsets();
        // the head weight [2l, h] and bias [2l] are contiguous
        assert_eq!(lay.off("fc22.weight"), o.w2 + 20 * 400);
        assert_eq!(lay.off("fc22.bias"), o.b2 + 20);
        let mut end = 0;
        for t in &lay.tensors {
            assert_eq!(t.offset, end);
            end += t.len();
        }
        assert_eq!(end, lay.total);
    }

    #[test]
    fn init_is_seeded_and_within_pytorch_bounds() {
        let lay = Layout::new(Dims::MNIST);
        let a = lay.init(1);
        assert_eq!(a, lay.init(1));
        assert_ne!(a, lay.init(2));
        for t in &lay.tensors {
            let bound = 1.0 / (t.fan_in as f32).sqrt();
            let s = &a[t.range()];
            assert!(s.iter().all(|v| v.abs() <= bound), "{}", t.name);
            // uniform on ±bound: the largest magnitude is close to the bound
            let max = s.iter().fold(0.0f32, |m, v| m.max(v.abs()));
            assert!(max > 0.9 * bound, "{}: {max} vs {bound}", t.name);
        }
    }
}
