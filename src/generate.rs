//! Plain generation for one sequence: prefill the prompt, then decode token by token with
//! the KV cache. (The serving engine batches many sequences; this is the CLI path.)

use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::model::Model;
use crate::sample::Sampler;

/// Up to `max_tokens` new tokens after `prompt`.
pub fn generate<B: Backend>(
    model: &Model<B>,
    prompt: &[u32],
    max_tokens: usize,
    sampler: &mut Sampler,
) -> Result<Vec<u32>> {
    if prompt.is_empty() {
        return Err(Error::Usage("--tokens: the prompt is empty".into()));
    }
    let limit = model.shape.max_position_embeddings as usize;
    if prompt.len() + max_tokens > limit {
        return Err(Error::Usage(format!(
            "{} prompt tokens + {max_tokens} new tokens exceed the context of {limit} (model.max_position_embeddings)",
            prompt.len()
        )));
    }
    let d = model.shape.hidden_size as usize;
    let mut cache = model.new_cache();
    let mut hidden = model.forward(prompt, &mut cache, None)?;
    let mut out = Vec::with_capacity(max_tokens);
    while out.len() < max_tokens {
        let last = &hidden[hidden.len() - d..];
        let next = if sampler.is_plain_greedy() {
            sampler.take_argmax(model.lm_head_argmax(last)?[0])
        } else {
            sampler.sample(&model.lm_head(last)?)
        };
        out.push(next);
        if out.len() == max_tokens {
            break;
        }
        hidden = model.forward(&[next], &mut cache, None)?;
    }
    Ok(out)
}
