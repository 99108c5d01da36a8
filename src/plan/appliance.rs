//! What the appliance runs on: the compile target, the GPU ISA and the devices of one node.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Appliance {
    /// Deployment name; shown by `kiln plan` and served as the model id.
    pub name: String,
    pub target: Target,
    /// GPU ISA the kernels are compiled for (`gfx950`, `gfx942`, `gfx90a`, or `sm_90` for
    /// cuda). Absent for the cpu target.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub arch: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Target {
    Cpu,
    Hip,
    Cuda,
}

impl Target {
    pub fn as_str(self) -> &'static str {
        match self {
            Target::Cpu => "cpu",
            Target::Hip => "hip",
            Target::Cuda => "cuda",
        }
    }
}

/// The accelerators of one node (for the cpu target: the host, counted as one device).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Device {
    /// Informational, e.g. "AMD Instinct MI355X".
    pub name: String,
    /// Devices per node.
    pub count: u32,
    /// Memory per device in GB (10^9 bytes), as vendors quote HBM.
    pub memory_gb: f64,
    /// Memory bandwidth per device in GB/s.
    pub bandwidth_gb_s: f64,
}

/// AMD ISAs kiln knows how to build for, oldest first.
pub const HIP_ARCHES: &[&str] = &["gfx90a", "gfx940", "gfx942", "gfx950"];

impl Device {
    /// The node a GPU ISA usually ships in, for `kiln plan init` defaults. Figures are the
    /// vendors' datasheet values.
    pub fn known(target: Target, arch: Option<&str>) -> Option<Device> {
        let (name, count, memory_gb, bandwidth_gb_s) = match (target, arch?) {
            (Target::Hip, "gfx950") => ("AMD Instinct MI355X", 8, 288.0, 8000.0),
            (Target::Hip, "gfx942") => ("AMD Instinct MI300X", 8, 192.0, 5300.0),
            // An MI250X shows up as two devices (GCDs) of 64 GB each.
            (Target::Hip, "gfx90a") => ("AMD Instinct MI250X (one GCD)", 8, 64.0, 1638.4),
            (Target::Cuda, "sm_90" | "sm_90a") => ("NVIDIA H100 SXM", 8, 80.0, 3350.0),
            _ => return None,
        };
        Some(Device { name: name.to_string(), count, memory_gb, bandwidth_gb_s })
    }

    pub fn memory_bytes(&self) -> f64 {
        self.memory_gb * 1e9
    }

    pub fn bandwidth_bytes_s(&self) -> f64 {
        self.bandwidth_gb_s * 1e9
    }
}
