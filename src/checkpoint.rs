//! `model.safetensors`: the parameters under PyTorch's names and layouts, so
//! `VAE().load_state_dict(safetensors.torch.load_file(...))` works as it is.

use crate::fsutil::write_atomic;
use crate::model::{Dims, Layout};
use anyhow::{bail, Context, Result};
use safetensors::{tensor::TensorView, Dtype, SafeTensors};
use std::collections::HashMap;
use std::path::Path;

/// Largest checkpoint we agree to read (a 784-16384-1024 model is ~100 MB).
const MAX_CHECKPOINT_BYTES: u64 = 1 << 30;
/// Largest layer size accepted from a checkpoint header.
const MAX_DIM: usize = 1 << 20;

/// Serialise `params` (flat, in `layout`'s order) with `metadata` added to the header.
pub fn to_bytes(
    layout: &Layout,
    params: &[f32],
    metadata: HashMap<String, String>,
) -> Result<Vec<u8>> {
    let mut views = Vec::new();
    let bytes: &[u8] = bytemuck::cast_slice(params);
    for t in &layout.tensors {
        let data = &bytes[t.offset * 4..(t.offset + t.len()) * 4];
        views.push((t.name, TensorView::new(Dtype::F32, t.shape.clone(), data)?));
    }
    let mut meta = metadata;
    meta.insert("format".into(), "pt".into());
    let d = layout.dims;
    meta.insert("vae_ood.dims".into(), format!("{},{},{}", d.d, d.h, d.l));
    serialize_sorted(views, meta)
}

/// `safetensors::serialize`, with the header's keys in sorted order: the crate
/// writes the metadata in `HashMap` order, which differs from run to run, so two
/// identical runs would write files that differ in their first bytes. The header
/// is re-written from its JSON (serde_json's maps are sorted) and padded with
/// spaces to its old length, so the tensor data and its offsets stay as they are.
pub fn serialize_sorted<'a>(
    views: Vec<(&'a str, TensorView<'a>)>,
    meta: HashMap<String, String>,
) -> Result<Vec<u8>> {
    let bytes = safetensors::serialize(views, Some(meta))?;
    let n = u64::from_le_bytes(bytes[..8].try_into()?) as usize;
    let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n])?;
    let mut sorted = serde_json::to_vec(&header)?;
    anyhow::ensure!(sorted.len() <= n, "safetensors header grew when sorted");
    sorted.resize(n, b' ');
    let mut out = Vec::with_capacity(bytes.len());
    out.extend_from_slice(&bytes[..8]);
    out.extend_from_slice(&sorted);
    out.extend_from_slice(&bytes[8 + n..]);
    Ok(out)
}

pub fn save(
    path: &Path,
    layout: &Layout,
    params: &[f32],
    metadata: HashMap<String, String>,
) -> Result<()> {
    write_atomic(path, &to_bytes(layout, params, metadata)?)
}

/// A checkpoint read back: its dims, flat parameters and header metadata.
pub struct Checkpoint {
    pub layout: Layout,
    pub params: Vec<f32>,
    pub metadata: HashMap<String, String>,
}

/// Parse a checkpoint. Errors (one line each) for a truncated or corrupt file,
/// missing or unknown tensors, dtypes other than F32, inconsistent shapes, and
/// non-finite values.
pub fn from_bytes(bytes: &[u8], name: &str) -> Result<Checkpoint> {
    let st = SafeTensors::deserialize(bytes)
        .map_err(|e| anyhow::anyhow!("{name}: not a valid safetensors file ({e})"))?;
    let (_, meta) =
        SafeTensors::read_metadata(bytes).map_err(|e| anyhow::anyhow!("{name}: {e}"))?;
    let shape_of = |t: &str| -> Result<Vec<usize>> {
        let v = st
            .tensor(t)
            .map_err(|_| anyhow::anyhow!("{name}: tensor {t} is missing"))?;
        Ok(v.shape().to_vec())
    };
    let w1 = shape_of("fc1.weight")?;
    let w21 = shape_of("fc21.weight")?;
    if w1.len() != 2 || w21.len() != 2 {
        bail!("{name}: fc1.weight and fc21.weight must be 2-D, found {w1:?} and {w21:?}");
    }
    let dims = Dims {
        d: w1[1],
        h: w1[0],
        l: w21[0],
    };
    if dims.d == 0 || dims.h == 0 || dims.l == 0 {
        bail!("{name}: a layer has size 0");
    }
    if w21[1] != dims.h {
        bail!(
            "{name}: fc21.weight has shape {w21:?}, but fc1.weight gives a hidden width of {}",
            dims.h
        );
    }
    if dims.d > MAX_DIM || dims.h > MAX_DIM || dims.l > MAX_DIM {
        bail!(
            "{name}: a layer size above {MAX_DIM} ({}-{}-{}) is not a vae-ood model",
            dims.d,
            dims.h,
            dims.l
        );
    }
    // every parameter is 4 bytes of the file: a header that claims more is refused
    // before anything is allocated (sizes ≤ 2^20 keep these products in range)
    let needed = Layout::new(dims).total * 4;
    if needed > bytes.len() {
        bail!(
            "{name}: a {}-{}-{} model needs {needed} bytes of parameters, the file has {}",
            dims.d,
            dims.h,
            dims.l,
            bytes.len()
        );
    }
    let layout = Layout::new(dims);
    let mut params = vec![0.0f32; layout.total];
    for t in &layout.tensors {
        let v = st
            .tensor(t.name)
            .map_err(|_| anyhow::anyhow!("{name}: tensor {} is missing", t.name))?;
        if v.dtype() != Dtype::F32 {
            bail!(
                "{name}: tensor {} has dtype {:?}, expected F32",
                t.name,
                v.dtype()
            );
        }
        if v.shape() != t.shape.as_slice() {
            bail!(
                "{name}: tensor {} has shape {:?}, expected {:?} for a {}-{}-{} model",
                t.name,
                v.shape(),
                t.shape,
                dims.d,
                dims.h,
                dims.l
            );
        }
        for (o, c) in params[t.range()].iter_mut().zip(v.data().chunks_exact(4)) {
            *o = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        }
        if params[t.range()].iter().any(|x| !x.is_finite()) {
            bail!("{name}: tensor {} holds non-finite values", t.name);
        }
    }
    let known: Vec<&str> = layout.tensors.iter().map(|t| t.name).collect();
    if let Some(extra) = st.names().into_iter().find(|n| !known.contains(n)) {
        bail!("{name}: unexpected tensor {extra} (not a vae-ood / PyTorch VAE checkpoint)");
    }
    Ok(Checkpoint {
        layout,
        params,
        metadata: meta.metadata().clone().unwrap_or_default(),
    })
}

/// Read and parse a checkpoint file; `expect` checks it fits the model to be used.
pub fn load(path: &Path, expect: Option<Dims>) -> Result<Checkpoint> {
    let name = path.display().to_string();
    let meta = std::fs::metadata(path).with_context(|| format!("cannot open checkpoint {name}"))?;
    if meta.len() > MAX_CHECKPOINT_BYTES {
        bail!(
            "{name}: {} bytes is too large for a vae-ood checkpoint",
            meta.len()
        );
    }
    let bytes = std::fs::read(path).with_context(|| format!("cannot read checkpoint {name}"))?;
    let ck = from_bytes(&bytes, &name)?;
    if let Some(d) = expect {
        if d != ck.layout.dims {
            let c = ck.layout.dims;
            bail!(
                "{name}: checkpoint is for a {}-{}-{} model, but {}-{}-{} was asked for",
                c.d,
                c.h,
                c.l,
                d.d,
                d.h,
                d.l
            );
        }
    }
    Ok(ck)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_errors() {
        let lay = Layout::new(Dims { d: 13, h: 7, l: 3 });
        let p = lay.init(3);
        let bytes = to_bytes(&lay, &p, HashMap::new()).unwrap();
        let ck = from_bytes(&bytes, "x").unwrap();
        assert_eq!(ck.params, p);
        assert_eq!(ck.layout, lay);
        assert_eq!(ck.metadata["vae_ood.dims"], "13,7,3");
        // truncated
        let e = from_bytes(&bytes[..bytes.len() - 5], "x")
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("not a valid safetensors"), "{e}");
        // garbage
        assert!(from_bytes(b"hello", "x").is_err());
        // wrong dtype / missing tensor
        let mut views = Vec::new();
        let raw: &[u8] = bytemuck::cast_slice(&p);
        for t in &lay.tensors {
            if t.name == "fc3.bias" {
                continue;
            }
            views.push((
                t.name,
                TensorView::new(
                    Dtype::F32,
                    t.shape.clone(),
                    &raw[t.offset * 4..(t.offset + t.len()) * 4],
                )
                .unwrap(),
            ));
        }
        let b2 = safetensors::serialize(views, None).unwrap();
        let e = from_bytes(&b2, "x").err().unwrap().to_string();
        assert!(e.contains("fc3.bias is missing"), "{e}");
    }

    /// The same parameters and metadata give the same bytes, whatever order the
    /// metadata map iterates in (each `HashMap` gets its own random hasher), and
    /// the file reads back with every key.
    #[test]
    fn same_checkpoint_same_bytes() {
        let lay = Layout::new(Dims { d: 5, h: 3, l: 2 });
        let p: Vec<f32> = (0..lay.total).map(|i| i as f32 * 0.25).collect();
        let meta = || -> HashMap<String, String> {
            (0..12)
                .map(|i| (format!("key{i}"), format!("value {i}")))
                .collect()
        };
        let first = to_bytes(&lay, &p, meta()).unwrap();
        for _ in 0..20 {
            assert!(to_bytes(&lay, &p, meta()).unwrap() == first);
        }
        let back = from_bytes(&first, "x").unwrap();
        assert_eq!(back.params, p);
        assert_eq!(
            back.metadata.get("key7").map(String::as_str),
            Some("value 7")
        );
        assert_eq!(back.metadata.get("format").map(String::as_str), Some("pt"));
        // data starts 8-byte aligned, as safetensors writes it
        let n = u64::from_le_bytes(first[..8].try_into().unwrap()) as usize;
        assert_eq!((8 + n) % 8, 0);
    }

    /// Inputs the fuzzer found (fuzz/regressions): zero-element tensors whose other
    /// dimension is huge made the loader size a layout of 2^40+ parameters.
    #[test]
    fn fuzz_regressions_are_clean_errors() {
        for (what, bytes) in [
            (
                "huge alloc",
                &include_bytes!("../fuzz/regressions/checkpoint-huge-alloc.bin")[..],
            ),
            (
                "layout overflow",
                &include_bytes!("../fuzz/regressions/checkpoint-layout-overflow.bin")[..],
            ),
        ] {
            let e = from_bytes(bytes, "f")
                .err()
                .unwrap_or_else(|| panic!("{what}: accepted"))
                .to_string();
            assert!(e.starts_with("f: "), "{what}: {e}");
            assert_eq!(e.lines().count(), 1);
        }
    }
}
