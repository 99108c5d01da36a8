//! Compute backends. The CPU backend is the reference every GPU kernel is checked against,
//! and the embedded default. `hip` loads a HIP plan's embedded code objects at start-up.

pub mod cpu;

#[cfg(feature = "hip")]
pub mod hip;
#[cfg(not(feature = "hip"))]
#[path = "hip_absent.rs"]
pub mod hip;
