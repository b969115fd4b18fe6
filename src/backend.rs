//! The two backends behind one trait: they own the buffers named by [`Buf`] and
//! execute [`Op`] lists. Everything above this (training loop, scoring) is shared.

use crate::plan::{Buf, Op, Sizes};
use anyhow::Result;
use std::ops::Range;

pub trait Backend {
    /// "cpu (2 threads)" or "gpu: <adapter> (<api>, <subgroup or portable reductions>)".
    fn describe(&self) -> String;
    /// "cpu" or "gpu".
    fn kind(&self) -> &'static str;
    fn sizes(&self) -> &Sizes;
    /// Overwrite `data.len()` elements of `buf` starting at element `offset`.
    fn write(&mut self, buf: Buf, offset: usize, data: &[f32]) -> Result<()>;
    /// Overwrite part of the index buffer (image ids into the image store).
    fn write_idx(&mut self, offset: usize, idx: &[u32]) -> Result<()>;
    /// Run the ops in order. The GPU backend records them all in one command
    /// encoder and one compute pass and submits without waiting.
    fn run(&mut self, ops: &[Op]) -> Result<()>;
    /// Read elements of `buf` (waits for all submitted work).
    fn read(&mut self, buf: Buf, range: Range<usize>) -> Result<Vec<f32>>;
    /// Start reading elements of `buf` as they will be once the work run so far
    /// has finished, without waiting for it: more runs may be submitted before
    /// [`Backend::collect`] hands over the values (which then waits for that work
    /// only). The GPU backend queues a copy into a staging buffer; the CPU
    /// backend, whose runs finish before they return, reads at once.
    fn read_later(&mut self, buf: Buf, range: Range<usize>) -> Result<PendingRead> {
        Ok(PendingRead(Pending::Ready(self.read(buf, range)?)))
    }
    /// The values of a [`Backend::read_later`] of this backend.
    fn collect(&mut self, read: PendingRead) -> Result<Vec<f32>> {
        match read.0 {
            Pending::Ready(v) => Ok(v),
            Pending::Staged { .. } => anyhow::bail!("a GPU read collected by another backend"),
        }
    }
    /// Whether [`Backend::run_timed`] can measure (GPU timestamp queries inside
    /// compute passes).
    fn has_timestamps(&self) -> bool {
        false
    }
    /// `run(ops)`, with a timestamp written before the first dispatch of
    /// `ops[timed.start]` and after the last dispatch of every op in `timed`; waits
    /// and returns the nanoseconds each op of `timed` took. `None`, and nothing run,
    /// where the backend has no timestamps.
    fn run_timed(&mut self, ops: &[Op], timed: Range<usize>) -> Result<Option<Vec<f64>>> {
        let _ = (ops, timed);
        Ok(None)
    }
    /// How many GPU dispatches `run(ops)` records (pairs, split-K reduces and
    /// folds counted); `None` for the CPU backend.
    fn dispatches(&self, ops: &[Op]) -> Option<usize> {
        let _ = ops;
        None
    }
}

/// A read begun by [`Backend::read_later`].
pub struct PendingRead(pub(crate) Pending);

pub(crate) enum Pending {
    /// read at once (CPU)
    Ready(Vec<f32>),
    /// a copy into `staging` in submission `index`; `mapped` answers once the
    /// copy is done and the buffer mapped
    Staged {
        staging: wgpu::Buffer,
        index: wgpu::SubmissionIndex,
        mapped: std::sync::mpsc::Receiver<Result<(), wgpu::BufferAsyncError>>,
    },
}

/// Which backend the user asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DeviceChoice {
    /// a hardware GPU through wgpu if there is one, else the CPU backend
    Auto,
    /// the wgpu shaders on whatever adapter wgpu picks (lavapipe included)
    Gpu,
    /// the CPU backend
    Cpu,
}

/// Create the backend for `choice` over an image store (bytes, 784 per image).
pub fn create(
    choice: DeviceChoice,
    store: &[u8],
    idx_len: usize,
    sizes: Sizes,
    quiet: bool,
) -> Result<Box<dyn Backend>> {
    let cpu = |store: &[u8]| -> Result<Box<dyn Backend>> {
        Ok(Box::new(crate::cpu_backend::CpuBackend::new(
            store, idx_len, sizes,
        )))
    };
    match choice {
        DeviceChoice::Cpu => {
            log::info!("CPU backend: {} threads", rayon::current_num_threads());
            cpu(store)
        }
        DeviceChoice::Gpu => {
            let adapter = crate::gpu::select_adapter()?.ok_or_else(crate::gpu::no_adapter_error)?;
            Ok(Box::new(crate::gpu::GpuBackend::new(
                adapter, store, idx_len, sizes,
            )?))
        }
        DeviceChoice::Auto => match crate::gpu::select_adapter()? {
            Some(a) if !crate::gpu::is_software(&a.get_info()) => Ok(Box::new(
                crate::gpu::GpuBackend::new(a, store, idx_len, sizes)?,
            )),
            other => {
                if !quiet {
                    let why = match other {
                        Some(a) => format!("only a software adapter ({})", a.get_info().name),
                        None => "no GPU adapter".to_string(),
                    };
                    eprintln!("note: {why} found; using the CPU backend (--device gpu forces the shaders)");
                }
                cpu(store)
            }
        },
    }
}
