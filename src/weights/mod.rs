//! Model directories: config.json, safetensors shards mapped without copying, the GLM-DSA
//! tensor naming, and the check of a checkpoint against the plan.

mod checkpoint;
mod config;
pub mod decode;
pub mod fault;
pub mod finite;
pub mod glm;
mod linear;
pub mod pin;
mod source;
mod verify;

pub use checkpoint::{Checkpoint, StoredAs, TensorBytes, TensorInfo};
pub use config::{HfConfig, parse_hf_config, read_hf_config};
pub use linear::{Linear, Stored, load_vector};
pub use safetensors::Dtype;
pub use source::WeightsSource;
pub use verify::verify;
