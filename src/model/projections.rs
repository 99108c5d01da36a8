//! A layer's linear projections, one `Backend::linears` call per input they read: q_a, kv_a
//! and the indexer's wk and weights_proj all read the input-normed x; q_b and the indexer's
//! wq_b both read the query latent. At decode sizes each is a small matrix, and on the CPU
//! each parallel loop costs a fork, a join and a thread idle at its end; one loop over all
//! their rows pays that once (on the mid-size bench model the saving was within the VM's
//! noise, a few percent at most).

use super::mla::LATENT_NORM_EPS;
use super::weights::{AttnWeights, IndexerWeights};
use crate::backend::Backend;
use crate::error::Result;

/// What a layer's attention and indexer read of its input.
pub struct Projections<B: Backend> {
    pub q: B::Tensor,   // [n, H * (nope + rope)], not yet roped
    pub ckv: B::Tensor, // [n, kv_lora + rope]: the latent and the rope key, neither yet normed nor roped
    /// Layers with an indexer.
    pub index_k: Option<B::Tensor>, // [n, Di], not yet normed
    /// Only when the indexer scores this step (`scoring`).
    pub index_scoring: Option<IndexQueries<B>>,
}

/// The indexer's side of a scoring step.
pub struct IndexQueries<B: Backend> {
    pub q: B::Tensor,       // [n, Hi * Di], not yet roped
    pub weights: B::Tensor, // [n, Hi], not yet scaled
}

/// x [n, D] (input-normed) through the layer's attention and, when it has one, its indexer
/// (its queries and head weights only when `scoring`).
pub fn project<B: Backend>(
    b: &B,
    attn: &AttnWeights<B>,
    ix: Option<&IndexerWeights<B>>,
    scoring: bool,
    x: &B::Tensor,
    aq: bool,
) -> Result<Projections<B>> {
    let scorer = ix.filter(|_| scoring);
    let mut of_x = vec![&attn.q_a, &attn.kv_a];
    of_x.extend(ix.map(|ix| &ix.wk));
    of_x.extend(scorer.map(|ix| &ix.weights_proj));
    let mut ys = b.linears(x, &of_x, aq)?.into_iter();
    let (qa, ckv) = (ys.next().expect("q_a"), ys.next().expect("kv_a"));
    let index_k = ix.map(|_| ys.next().expect("wk"));
    let index_weights = scorer.map(|_| ys.next().expect("weights_proj"));

    let q_lat = b.rms_norm(&qa, &attn.q_a_norm, LATENT_NORM_EPS)?;
    let mut of_lat = vec![&attn.q_b];
    of_lat.extend(scorer.map(|ix| &ix.wq_b));
    let mut ys = b.linears(&q_lat, &of_lat, aq)?.into_iter();
    let q = ys.next().expect("q_b");
    let index_scoring = match (ys.next(), index_weights) {
        (Some(q), Some(weights)) => Some(IndexQueries { q, weights }),
        _ => None,
    };
    Ok(Projections { q, ckv, index_k, index_scoring })
}

/// Whether the indexer scores any of this step's queries: not when every one's causal window
/// fits in its top-k.
pub fn scoring(index_topk: usize, positions: &[usize]) -> bool {
    !positions.iter().all(|&p| p < index_topk)
}
