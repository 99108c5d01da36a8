//! The tuned kernel map: which kernel variant serves each (op, token bucket).
//!
//! Reserved here so plans can carry it; the kernel pipeline derives the required
//! (op, shape, bucket) set and makes every uncovered entry a build error.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KernelMap {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub entries: Vec<KernelEntry>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KernelEntry {
    /// Op instance, e.g. `moe.routed`.
    pub op: String,
    /// Largest token count this row serves.
    pub bucket: u64,
    /// Kernel variant name; it must exist in this build.
    pub kernel: String,
}
