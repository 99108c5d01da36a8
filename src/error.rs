//! The crate's one error type. Every variant names the thing at fault: a file, a plan key,
//! a tensor.

use std::path::PathBuf;

use crate::plan::{IN_PIN, IN_PLAN, Problem, render_problems};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A plan broke rules; every problem names its key.
    #[error("{}", render_problems(IN_PLAN, .0))]
    Plan(Vec<Problem>),
    /// A model directory's config.json is missing keys or describes something kiln cannot serve.
    #[error("{}: {message}", path.display())]
    Config { path: PathBuf, message: String },
    /// A safetensors file or index is unreadable, truncated or inconsistent.
    #[error("{}: {message}", path.display())]
    Checkpoint { path: PathBuf, message: String },
    /// The weights are not the ones the plan's `[weights.pin]` names.
    #[error("{}", render_problems(IN_PIN, .0).trim_end())]
    Pin(Vec<Problem>),
    /// A GPU (or the emulated device) refused a call: the device and what failed.
    #[error("{device}: {message}")]
    Device { device: String, message: String },
    /// A GPU appliance found no device to run on (never a silent fall back to the CPU).
    #[error("no GPU to run on: {0}")]
    NoDevice(String),
    /// A command line that cannot be carried out.
    #[error("{0}")]
    Usage(String),
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io { path: path.into(), source }
    }
}
