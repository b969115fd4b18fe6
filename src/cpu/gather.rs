//! CPU twin of `shaders/gather.wgsl`: build a batch of f32 inputs from the
//! byte-packed image store.

use bytemuck::{Pod, Zeroable};

#[repr(C)]
#[derive(Debug, Clone, Copy, Pod, Zeroable, PartialEq)]
pub struct GatherParams {
    /// images in the batch
    pub rows: u32,
    /// pixels per image (784)
    pub d: u32,
    /// first entry of `idx` used by this batch
    pub idx_off: u32,
    pub _pad: u32,
}

super::with_avx2! {
    /// x: (rows, d) = data[idx[idx_off + r]] / 255.
    ///
    /// `data` holds the images as bytes packed four to a u32 (little-endian byte order:
    /// byte `i` of the store is `(data[i / 4] >> (8 * (i % 4))) & 255`), which keeps the
    /// 47 MB MNIST training set under wgpu's default 128 MiB binding limit.
    pub fn gather_pixels(x: &mut [f32], data: &[u32], idx: &[u32], p: &GatherParams)
        => gather_pixels_body
}

#[inline(always)]
fn gather_pixels_body(x: &mut [f32], data: &[u32], idx: &[u32], p: &GatherParams) {
    let d = p.d as usize;
    for r in 0..p.rows as usize {
        let base = idx[p.idx_off as usize + r] as usize * d;
        let out = &mut x[r * d..(r + 1) * d];
        if cfg!(target_endian = "little") {
            // on a little-endian machine the packed words are the store's bytes in order
            let bytes: &[u8] = bytemuck::cast_slice(data);
            for (o, &byte) in out.iter_mut().zip(&bytes[base..base + d]) {
                *o = byte as f32 / 255.0;
            }
        } else {
            for (c, o) in out.iter_mut().enumerate() {
                let i = base + c;
                let byte = (data[i / 4] >> (8 * (i % 4))) & 255;
                *o = byte as f32 / 255.0;
            }
        }
    }
}

/// Pack bytes four to a u32 (the layout `gather_pixels` reads); pads with zeros.
pub fn pack_bytes(bytes: &[u8]) -> Vec<u32> {
    bytes
        .chunks(4)
        .map(|c| {
            let mut w = [0u8; 4];
            w[..c.len()].copy_from_slice(c);
            u32::from_le_bytes(w)
        })
        .collect()
}
