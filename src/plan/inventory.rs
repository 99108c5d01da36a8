//! The weight inventory: every tensor family the model stores, its shape, its storage
//! format under the plan's quant rules, and how the parallel layout splits it.
//!
//! It is the tensor table of src/weights/glm.rs (which build.rs includes beside this module)
//! grouped by family; the memory planner and the roofline are sums over it.

use super::{ModuleClass, Plan, WeightFormat};
use crate::weights::glm::{Kind, Split, TensorTable};

/// How a tensor is stored, in bytes per element (MXFP4 counts its E8M0 scales).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoredFormat {
    Bf16,
    F32,
    Mxfp4,
}

impl From<WeightFormat> for StoredFormat {
    fn from(f: WeightFormat) -> Self {
        match f {
            WeightFormat::Bf16 => StoredFormat::Bf16,
            WeightFormat::F32 => StoredFormat::F32,
            WeightFormat::Mxfp4 => StoredFormat::Mxfp4,
        }
    }
}

impl StoredFormat {
    /// Bytes of a [rows, cols] matrix; MXFP4 packs two E2M1 codes per byte plus one E8M0
    /// byte per 32 inputs of a row (4.25 bits per weight).
    pub fn bytes(self, rows: u64, cols: u64) -> u64 {
        match self {
            StoredFormat::Bf16 => rows * cols * 2,
            StoredFormat::F32 => rows * cols * 4,
            StoredFormat::Mxfp4 => rows * cols.div_ceil(2) + rows * cols.div_ceil(32),
        }
    }
}

/// One family of identical tensors: `instances` copies of a [rows, cols] matrix.
#[derive(Debug, Clone, PartialEq)]
pub struct WeightGroup {
    /// Human label, e.g. `attention.q_b_proj`.
    pub label: &'static str,
    pub class: ModuleClass,
    /// Part of the MTP layer.
    pub mtp: bool,
    pub instances: u64,
    pub rows: u64,
    pub cols: u64,
    pub format: StoredFormat,
    /// Each device holds instances / split_instances ...
    pub split_instances: u64,
    /// ... of [rows / split_rows, cols / split_cols] each (ceiling division).
    pub split_rows: u64,
    pub split_cols: u64,
    /// Fraction of the instances one decode token reads (routed experts: top-k / experts).
    pub active_fraction: f64,
}

impl WeightGroup {
    pub fn total_bytes(&self) -> u64 {
        self.instances * self.format.bytes(self.rows, self.cols)
    }

    /// The [rows, cols] of one instance's shard on one device.
    pub fn shard_shape(&self) -> (u64, u64) {
        (self.rows.div_ceil(self.split_rows), self.cols.div_ceil(self.split_cols))
    }

    pub fn bytes_per_device(&self) -> u64 {
        let (r, c) = self.shard_shape();
        self.instances.div_ceil(self.split_instances) * self.format.bytes(r, c)
    }

    /// Bytes of this group one decode token reads on one device.
    pub fn active_bytes_per_device(&self) -> f64 {
        self.bytes_per_device() as f64 * self.active_fraction
    }
}

/// The weight inventory of `plan`: the tensor table (weights/glm.rs) with each family's
/// storage format from the quant rules, families of the same label and layout added up.
pub fn weight_inventory(plan: &Plan) -> Vec<WeightGroup> {
    let tp = u64::from(plan.parallel.tp.max(1));
    let ep = u64::from(plan.parallel.ep.max(1));
    let per_expert = (tp / ep).max(1);
    let mut groups: Vec<WeightGroup> = Vec::new();
    for f in &TensorTable::new(&plan.model).families {
        let (format, split, active_fraction) = match f.kind {
            // Classes without a rule (missing MTP rules, which validation reports) count as
            // bf16 so the planner can still add up.
            Kind::Matrix { class, split, active } => (
                plan.weights.quant.format(class, f.mtp).map(StoredFormat::from).unwrap_or(StoredFormat::Bf16),
                split,
                active,
            ),
            Kind::Vector { f32_only } => {
                (if f32_only { StoredFormat::F32 } else { StoredFormat::Bf16 }, Split::Replicated, 1.0)
            }
        };
        let (split_instances, split_rows, split_cols) = match split {
            Split::Replicated => (1, 1, 1),
            Split::Rows => (1, tp, 1),
            Split::Cols => (1, 1, tp),
            Split::ExpertRows => (ep, per_expert, 1),
            Split::ExpertCols => (ep, 1, per_expert),
        };
        let group = WeightGroup {
            label: f.label,
            class: f.class(),
            mtp: f.mtp,
            instances: f.count(),
            rows: f.rows,
            cols: f.cols,
            format,
            split_instances,
            split_rows,
            split_cols,
            active_fraction,
        };
        match groups.iter_mut().find(|g| WeightGroup { instances: g.instances, ..group.clone() } == **g) {
            Some(g) => g.instances += group.instances,
            None => groups.push(group),
        }
    }
    groups
}
