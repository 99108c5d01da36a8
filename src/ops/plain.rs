//! Cases whose kernels read and write plain buffers: inputs uploaded as given, outputs zeroed,
//! one launch function over them, outputs read back in a declared form. Most declarations
//! need nothing more.

use std::sync::Arc;

use super::{Output, Prepared, Setup};
use crate::device::{Buffer, Gpu};
use crate::error::Result;

/// A buffer's initial contents.
#[derive(Clone)]
pub enum Init {
    F32(Vec<f32>),
    I32(Vec<i32>),
    U8(Vec<u8>),
    ZeroF32(usize),
    ZeroI32(usize),
    ZeroU8(usize),
}

/// How an output buffer is read back.
#[derive(Clone, Copy)]
pub enum Read {
    Floats,
    /// Rows of `width` i32, compared in order.
    Indices(usize),
    /// Bytes, compared exactly (as one row).
    Bytes,
}

pub type LaunchFn = dyn Fn(&Gpu, &[Buffer]) -> Result<()> + Send + Sync;

/// A setup that uploads `inits` (buffer i = inits[i]) and launches `launch` over them;
/// `reads` name the buffers that make the output, in order.
pub fn setup(inits: Vec<Init>, reads: Vec<(usize, Read)>, launch: Arc<LaunchFn>) -> Setup {
    Box::new(move |gpu| {
        let bufs = inits
            .iter()
            .map(|i| match i {
                Init::F32(v) => gpu.upload(v),
                Init::I32(v) => gpu.upload(v),
                Init::U8(v) => gpu.upload(v),
                Init::ZeroF32(n) => gpu.zeros::<f32>(*n),
                Init::ZeroI32(n) => gpu.zeros::<i32>(*n),
                Init::ZeroU8(n) => gpu.zeros::<u8>(*n),
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Box::new(Plain { bufs, reads: reads.clone(), launch: launch.clone() }) as Box<dyn Prepared>)
    })
}

struct Plain {
    bufs: Vec<Buffer>,
    reads: Vec<(usize, Read)>,
    launch: Arc<LaunchFn>,
}

impl Prepared for Plain {
    fn launch(&self, gpu: &Gpu) -> Result<()> {
        (self.launch)(gpu, &self.bufs)
    }

    fn output(&self) -> Result<Output> {
        let mut outs = Vec::new();
        for &(i, how) in &self.reads {
            let b = &self.bufs[i];
            outs.push(match how {
                Read::Floats => Output::Floats(b.read()?),
                Read::Indices(w) => Output::Indices(b.read::<i32>()?.chunks(w.max(1)).map(<[i32]>::to_vec).collect()),
                Read::Bytes => Output::Indices(vec![b.read::<u8>()?.into_iter().map(i32::from).collect()]),
            });
        }
        Ok(if outs.len() == 1 { outs.remove(0) } else { Output::Many(outs) })
    }
}
