//! Choosing next tokens on the device: greedy, and temperature + top-p at a given uniform
//! draw (kernels/sample.hip). CPU reference: sample::argmax, and sample::Sampler's
//! distribution, in which the drawn token's slice of the cumulative mass must hold the draw
//! (what sample::draw_at picks).

use rand::Rng;

use super::{Case, OpDecl, Output, Prepared, rng_for, uniform};
use crate::backend::gpu::launch;
use crate::device::{Buffer, Gpu};
use crate::error::Result;
use crate::plan::{KernelVariant, OpShape};
use crate::sample::{Sampler, SamplingParams, argmax};

// Greedy picks must be equal; a draw may land up to 1e-4 of the mass from its slice.
pub static DECL: OpDecl = OpDecl { family: "sample", tolerance: 1e-4, checks, at };

fn checks(v: &'static KernelVariant) -> Vec<Case> {
    // The last: GLM-5.2's vocabulary.
    vec![case(v, 3, 1000, 0.8, 0.9), case(v, 2, 333, 1.3, 0.5), case(v, 1, 154_880, 0.6, 0.95)]
}

fn at(v: &'static KernelVariant, shape: &OpShape, tokens: usize) -> Case {
    let OpShape::Sample { vocab } = *shape else { panic!("sample at {shape}") };
    case(v, tokens, vocab as usize, 0.8, 0.9)
}

fn case(v: &'static KernelVariant, t: usize, vocab: usize, temperature: f32, top_p: f32) -> Case {
    let shape = format!("vocab={vocab} rows={t} temperature={temperature} top_p={top_p}");
    let mut rng = rng_for(v.op, &shape);
    let logits = uniform(&mut rng, t * vocab, 6.0); // [T, V]
    let u: Vec<f32> = (0..t).map(|_| rng.random::<f32>()).collect(); // [T]
    let params = SamplingParams { temperature, top_p, seed: Some(0), ..SamplingParams::default() };
    let sampler = Sampler::new(params, &[]);
    let greedy: Vec<Vec<i32>> = logits.chunks(vocab).map(|row| vec![argmax(row) as i32]).collect();
    let p: Vec<Vec<f32>> =
        logits.chunks(vocab).map(|row| sampler.distribution(row).expect("temperature > 0 samples")).collect();
    Case {
        variant: v,
        shape,
        bytes: 4 * logits.len(),
        expected: Output::Many(vec![Output::Indices(greedy), Output::Draws { p, u: u.clone() }]),
        setup: Box::new(move |gpu| {
            Ok(Box::new(Bufs {
                logits: gpu.upload(&logits)?,
                u: gpu.upload(&u)?,
                greedy: gpu.zeros::<i32>(t)?,
                drawn: gpu.zeros::<i32>(t)?,
                t,
                vocab,
                temperature,
                top_p,
            }))
        }),
    }
}

struct Bufs {
    logits: Buffer, // [T, V] f32
    u: Buffer,      // [T] f32 uniform draws
    greedy: Buffer, // [T] i32
    drawn: Buffer,  // [T] i32
    t: usize,
    vocab: usize,
    temperature: f32,
    top_p: f32,
}

impl Prepared for Bufs {
    fn launch(&self, gpu: &Gpu) -> Result<()> {
        launch::sample_greedy(gpu, &self.logits, &self.greedy, self.t, self.vocab)?;
        launch::sample_top_p(gpu, &self.logits, &self.u, &self.drawn, self.t, self.vocab, self.temperature, self.top_p)
    }

    fn output(&self) -> Result<Output> {
        let one = |v: Vec<i32>| v.into_iter().map(|x| vec![x]).collect();
        Ok(Output::Many(vec![Output::Indices(one(self.greedy.read()?)), Output::Indices(one(self.drawn.read()?))]))
    }
}
