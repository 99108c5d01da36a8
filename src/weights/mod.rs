//! Model directories: config.json, safetensors shards mapped without copying, and the
//! GLM-DSA tensor naming.

mod checkpoint;
mod config;
pub mod glm;

pub use checkpoint::{Checkpoint, TensorInfo};
pub use config::{HfConfig, read_hf_config};
pub use safetensors::Dtype;
