//! `kiln compare --weights DIR`: any checkpoint's forward on this binary's GPU backend (an
//! NVIDIA GPU, an AMD GPU or the emulated device) against the CPU backend, which is the
//! oracle. With the checkpoint's `golden.safetensors` beside it (HF transformers' fp32
//! `logits` for its `input_ids`, as tools/ writes for the golden fixtures) both are also
//! measured against HF. The plan comes from the checkpoint, as `kiln plan init` writes it.

use std::path::Path;

use crate::backend::Backend;
use crate::backend::cpu::Cpu;
use crate::error::{Error, Result};
use crate::model::Model;
use crate::plan::Target;
use crate::plan_init::{InitOptions, init_from_hf};
use crate::sample::{Sampler, SamplingParams};
use crate::weights::Checkpoint;

/// The golden fixtures' tolerance: max |Δlogit| within 2e-3 x max(1, max |reference|).
const RELATIVE_TOLERANCE: f32 = 2e-3;

/// Prompt length when neither --tokens nor a golden file gives one.
const DEFAULT_PROMPT: u32 = 24;

pub struct Comparison {
    pub device: String,
    pub positions: usize,
    /// max |GPU - CPU| over every position's logits, and the tolerance for it.
    pub gpu_vs_cpu: (f32, f32),
    /// max |GPU - HF| and |CPU - HF| with the tolerance, when a golden file was there.
    pub vs_hf: Option<(f32, f32, f32)>,
    /// Greedy continuations of the prompt on each backend.
    pub greedy_cpu: Vec<u32>,
    pub greedy_gpu: Vec<u32>,
}

impl Comparison {
    pub fn passed(&self) -> bool {
        let within = |(d, tol): (f32, f32)| d <= tol;
        within(self.gpu_vs_cpu)
            && self.vs_hf.is_none_or(|(g, c, tol)| g <= tol && c <= tol)
            && self.greedy_cpu == self.greedy_gpu
    }

    pub fn report(&self, dir: &Path) -> String {
        let (d, tol) = self.gpu_vs_cpu;
        let mut s = format!(
            "{}: {} positions on {}\n  GPU vs CPU max |dlogit| {d:.2e} (tolerance {tol:.2e})\n",
            dir.display(),
            self.positions,
            self.device
        );
        if let Some((g, c, tol)) = self.vs_hf {
            s.push_str(&format!("  vs HF: GPU {g:.2e}, CPU {c:.2e} (tolerance {tol:.2e})\n"));
        }
        let same = if self.greedy_cpu == self.greedy_gpu { "same" } else { "DIFFERENT" };
        s.push_str(&format!(
            "  greedy {} tokens: {same} (CPU {:?}, GPU {:?})\n  {}\n",
            self.greedy_cpu.len(),
            self.greedy_cpu,
            self.greedy_gpu,
            if self.passed() { "PASS" } else { "FAIL" }
        ));
        s
    }
}

/// Runs `tokens` (else the golden file's input_ids, else a fixed pattern) through both
/// backends and continues it greedily for `greedy` tokens on each.
pub fn compare(dir: &Path, tokens: Option<Vec<u32>>, greedy: usize) -> Result<Comparison> {
    let opts = InitOptions { target: Target::Cpu, arch: None, tp: None, dp: None };
    let plan = init_from_hf(dir, &opts)?.plan;
    let ckpt = Checkpoint::open(dir)?;
    let gpu = crate::backend::gpu_backend(&plan)?;
    let device = gpu.gpu.describe();
    let cpu = Model::load_on(Cpu, &plan, &ckpt)?;
    let dev = Model::load_on(gpu, &plan, &ckpt)?;

    let golden = Golden::read(dir)?;
    let from_golden = tokens.is_none() && golden.is_some();
    let ids = match (tokens, &golden) {
        (Some(t), _) => t,
        (None, Some(g)) => g.input_ids.clone(),
        (None, None) => (0..DEFAULT_PROMPT).map(|i| (i * 37 + 5) % cpu.vocab_size() as u32).collect(),
    };
    if let Some(&t) = ids.iter().find(|&&t| t as usize >= cpu.vocab_size()) {
        return Err(Error::Usage(format!("--tokens: id {t} is past the vocabulary of {}", cpu.vocab_size())));
    }
    let cpu_logits = logits(&cpu, &ids)?;
    let dev_logits = logits(&dev, &ids)?;
    let vs_hf = match &golden {
        Some(g) if from_golden => {
            let tol = tolerance(&g.logits);
            Some((max_abs_diff(&dev_logits, &g.logits)?, max_abs_diff(&cpu_logits, &g.logits)?, tol))
        }
        _ => None,
    };
    Ok(Comparison {
        device,
        positions: ids.len(),
        gpu_vs_cpu: (max_abs_diff(&dev_logits, &cpu_logits)?, tolerance(&cpu_logits)),
        vs_hf,
        greedy_cpu: continue_greedy(&cpu, &ids, greedy)?,
        greedy_gpu: continue_greedy(&dev, &ids, greedy)?,
    })
}

fn logits<B: Backend>(m: &Model<B>, ids: &[u32]) -> Result<Vec<f32>> {
    m.lm_head(&m.forward(ids, &mut m.new_cache(), None)?)
}

fn continue_greedy<B: Backend>(m: &Model<B>, ids: &[u32], n: usize) -> Result<Vec<u32>> {
    let room = (m.shape.max_position_embeddings as usize).saturating_sub(ids.len());
    crate::generate::generate(m, ids, n.min(room), &mut Sampler::new(SamplingParams::greedy(), ids))
}

fn tolerance(reference: &[f32]) -> f32 {
    RELATIVE_TOLERANCE * reference.iter().fold(1.0f32, |m, v| m.max(v.abs()))
}

/// max |a - b|; NaN anywhere counts as infinitely far.
fn max_abs_diff(a: &[f32], b: &[f32]) -> Result<f32> {
    if a.len() != b.len() {
        return Err(Error::Usage(format!("golden.safetensors: {} logits where the model gives {}", b.len(), a.len())));
    }
    Ok(a.iter().zip(b).map(|(x, y)| if (x - y).is_nan() { f32::INFINITY } else { (x - y).abs() }).fold(0.0, f32::max))
}

/// HF's logits [S, V] for input_ids [S].
struct Golden {
    input_ids: Vec<u32>,
    logits: Vec<f32>,
}

impl Golden {
    fn read(dir: &Path) -> Result<Option<Golden>> {
        let path = dir.join("golden.safetensors");
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Error::io(&path, e)),
        };
        let bad = |m: String| Error::Usage(format!("{}: {m}", path.display()));
        let st = safetensors::SafeTensors::deserialize(&bytes).map_err(|e| bad(e.to_string()))?;
        let ids = st.tensor("input_ids").map_err(|e| bad(format!("input_ids: {e}")))?;
        let logits = st.tensor("logits").map_err(|e| bad(format!("logits: {e}")))?;
        if ids.dtype() != safetensors::Dtype::I64 || logits.dtype() != safetensors::Dtype::F32 {
            return Err(bad("want input_ids as I64 and logits as F32".into()));
        }
        let input_ids = ids
            .data()
            .chunks_exact(8)
            .map(|c| u32::try_from(i64::from_le_bytes(c.try_into().expect("8 bytes"))))
            .collect::<std::result::Result<_, _>>()
            .map_err(|_| bad("input_ids: an id outside u32".into()))?;
        let logits =
            logits.data().chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes"))).collect();
        Ok(Some(Golden { input_ids, logits }))
    }
}
