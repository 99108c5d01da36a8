//! kiln turns a deployment plan into an inference appliance for GLM-5.x MoE models.
//!
//! The map (README.md has the one-page version):
//! - [`plan`]: the TOML deployment plan, its validation and the memory/roofline planner.
//!   build.rs runs the same module, so an invalid plan is a build error.
//! - [`baked`]: the plan baked into this binary.
//! - [`weights`]: model directories: config.json, safetensors shards (mmapped), element
//!   decoders, the GLM tensor names, and the check of a checkpoint against the plan.
//! - [`backend`]: the ops; the CPU backend is the reference and the embedded default.
//! - [`model`]: the GLM-DSA forward (MLA, DSA indexer with IndexShare, MoE, MTP) and its cache.
//! - [`sample`], [`generate`]: choosing tokens; prefill + cached decode of one sequence.
//! - [`constrain`]: llguidance grammars (JSON schemas, GLM tool calls) that mask sampling.
//! - [`plan_init`]: writing a plan for an HF model directory.
//! - [`report`]: what `kiln plan` prints.
//! - [`log`], [`signals`]: the event log on stderr; SIGTERM/SIGINT/SIGHUP for the server.

pub mod app;
pub mod backend;
pub mod baked;
pub mod bench;
pub mod compare;
pub mod constrain;
pub mod deploy;
pub mod device;
pub mod engine;
pub mod error;
pub mod generate;
pub mod kv;
pub mod log;
pub mod metrics;
pub mod model;
pub mod ops;
pub mod plan;
pub mod plan_init;
pub mod report;
pub mod sample;
pub mod server;
pub mod signals;
pub mod tokenizer;
pub mod weights;

pub use error::{Error, Result};
