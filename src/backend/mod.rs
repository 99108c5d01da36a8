//! Compute backends. The CPU backend is the reference every GPU kernel is checked against,
//! and the embedded default.

pub mod cpu;
