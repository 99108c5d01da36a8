//! Which kernel variant runs an op at a step's size: the plan's kernel map, read at run time
//! the way build.rs reads it (the bucket is the step's token count rounded up to a power of
//! two). A plan without a map (the cpu target, run on the emulated device to compare with the
//! CPU) gets the map `kiln plan init` would write for it.

use std::collections::BTreeMap;

use crate::plan::{self, KernelVariant, Plan, REGISTRY, Target};

pub struct KernelChoice {
    /// (op family, bucket) -> variant, first map row wins.
    rows: BTreeMap<(String, u64), &'static KernelVariant>,
}

impl KernelChoice {
    pub fn for_plan(plan: &Plan) -> KernelChoice {
        let entries = if plan.appliance.target == Target::Cpu {
            let mut as_gpu = plan.clone();
            as_gpu.appliance.target = Target::Hip;
            plan::default_entries(&as_gpu)
        } else {
            plan.kernels.entries.clone()
        };
        let mut rows = BTreeMap::new();
        for e in &entries {
            if let Some(v) = plan::variant(&e.kernel) {
                for &b in &e.buckets {
                    rows.entry((v.op.to_string(), b)).or_insert(v);
                }
            }
        }
        KernelChoice { rows }
    }

    /// The variant of `family` for a step of `tokens` tokens: the map's row at that bucket,
    /// else (a format no plan row names, like the f32 oracle KV) the registry's variant of the
    /// smallest reach that covers it, as the default map would choose.
    pub fn pick(&self, family: &str, tokens: usize) -> Option<&'static KernelVariant> {
        let bucket = (tokens.max(1) as u64).next_power_of_two();
        if let Some(v) = self.rows.get(&(family.to_string(), bucket)) {
            return Some(v);
        }
        let mut variants: Vec<&'static KernelVariant> = REGISTRY.iter().filter(|v| v.op == family).collect();
        variants.sort_by_key(|v| v.max_bucket);
        variants.iter().find(|v| bucket <= v.max_bucket).or(variants.last()).copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_map_decides_and_missing_formats_fall_back() {
        let plan = plan::check(include_str!("../../../plan/tiny-hip-gfx90a.toml")).expect("valid plan");
        let c = KernelChoice::for_plan(&plan);
        assert_eq!(c.pick("moe.mxfp4", 1).map(|v| v.name), Some("moe.mxfp4.wave_per_row"));
        assert_eq!(c.pick("moe.mxfp4", 64).map(|v| v.name), Some("moe.mxfp4.wave_per_row"));
        assert_eq!(c.pick("moe.mxfp4", 65).map(|v| v.name), Some("moe.mxfp4.tile64x32"));
        assert_eq!(c.pick("kv_write.f32", 3).map(|v| v.name), Some("kv_write.f32"));
        assert!(c.pick("no.such.family", 1).is_none());
    }
}
