//! Loading the golden fixtures written by tools/make_fixtures.py.

use std::collections::BTreeMap;
use std::path::PathBuf;

use kiln::model::Model;
use kiln::plan::{Plan, Target};
use kiln::plan_init::{InitOptions, init_from_hf};
use kiln::weights::Checkpoint;
use safetensors::{Dtype, SafeTensors};

pub const FIXTURES: [&str; 3] = ["share_mxfp4", "full_bf16_groups", "share_mxfp4_odd"];

pub fn fixture_dir(name: &str) -> PathBuf {
    super::repo_path(&format!("tests/fixtures/{name}"))
}

/// The plan `kiln plan init --from-hf` writes for a fixture directory.
pub fn fixture_plan(name: &str) -> Plan {
    let opts = InitOptions { target: Target::Cpu, arch: None, tp: None, dp: None };
    init_from_hf(&fixture_dir(name), &opts).expect("plan init on a fixture").plan
}

pub fn load_model(name: &str) -> Model {
    let plan = fixture_plan(name);
    let ckpt = Checkpoint::open(&fixture_dir(name)).expect("fixture checkpoint opens");
    Model::load(&plan, &ckpt).unwrap_or_else(|e| panic!("{name}: {e}"))
}

/// golden.safetensors: tensors by name, as f32 or i64 values with their shapes.
pub struct Golden {
    pub f32s: BTreeMap<String, (Vec<usize>, Vec<f32>)>,
    pub i64s: BTreeMap<String, (Vec<usize>, Vec<i64>)>,
}

impl Golden {
    pub fn load(name: &str) -> Golden {
        Golden::load_path(&fixture_dir(name).join("golden.safetensors"))
    }

    pub fn load_path(path: &std::path::Path) -> Golden {
        let bytes = std::fs::read(path).unwrap();
        let st = SafeTensors::deserialize(&bytes).unwrap();
        let (mut f32s, mut i64s) = (BTreeMap::new(), BTreeMap::new());
        for (n, v) in st.tensors() {
            let shape = v.shape().to_vec();
            match v.dtype() {
                Dtype::F32 => {
                    let vals = v.data().chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect();
                    f32s.insert(n, (shape, vals));
                }
                Dtype::I64 => {
                    let vals = v.data().chunks_exact(8).map(|c| i64::from_le_bytes(c.try_into().unwrap())).collect();
                    i64s.insert(n, (shape, vals));
                }
                other => panic!("{n}: unexpected dtype {other:?}"),
            }
        }
        Golden { f32s, i64s }
    }

    pub fn f32(&self, n: &str) -> &(Vec<usize>, Vec<f32>) {
        &self.f32s[n]
    }

    pub fn tokens(&self, n: &str) -> Vec<u32> {
        self.i64s[n].1.iter().map(|&t| t as u32).collect()
    }

    /// Row-major [rows, cols] integers, per row.
    pub fn rows(&self, n: &str) -> Vec<Vec<i64>> {
        let (shape, vals) = &self.i64s[n];
        vals.chunks(shape[1]).map(|r| r.to_vec()).collect()
    }
}

/// max |a - b| and the tolerance 2e-3 x max(1, max |b|) the golden tests allow.
pub fn max_diff(a: &[f32], b: &[f32]) -> (f32, f32) {
    assert_eq!(a.len(), b.len());
    let d = a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max);
    let scale = b.iter().fold(1.0f32, |m, v| m.max(v.abs()));
    (d, 2e-3 * scale)
}

pub fn argmax(row: &[f32]) -> usize {
    row.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).map(|(i, _)| i).unwrap()
}
