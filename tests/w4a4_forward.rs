//! A W4A4 plan on the CPU (activations rounded to the MXFP4 grid before every MXFP4 linear,
//! as amd/GLM-5.2-MXFP4 runs): the kernels take such inputs in their own exact form (int8
//! on AVX2), chosen by the plan and never by the batch, so a prompt's logits are the same
//! bits whole, in chunks and token by token; and they are the W4A4 numbers, not the
//! unquantized ones.

mod common;

use common::fixture::*;
use kiln::model::Model;
use kiln::plan::ActivationQuant;
use kiln::weights::Checkpoint;

fn load(name: &str, activations: ActivationQuant) -> Model {
    let mut plan = fixture_plan(name);
    plan.weights.quant.activations = activations;
    Model::load(&plan, &Checkpoint::open(&fixture_dir(name)).unwrap()).unwrap()
}

/// The logits of the prompt's last token, its tokens fed in chunks of the given sizes.
fn last_logits(model: &Model, ids: &[u32], chunks: &[usize]) -> Vec<f32> {
    let d = model.shape.hidden_size as usize;
    let mut cache = model.new_cache();
    let (mut at, mut hidden) = (0, Vec::new());
    for &c in chunks.iter().chain(std::iter::repeat(&1)) {
        if at == ids.len() {
            break;
        }
        let end = (at + c).min(ids.len());
        hidden = model.forward(&ids[at..end], &mut cache, None).unwrap();
        at = end;
    }
    model.logits(&hidden[hidden.len() - d..])
}

#[test]
fn w4a4_logits_do_not_depend_on_how_the_prompt_is_cut() {
    for name in ["share_mxfp4", "share_mxfp4_odd"] {
        let ids = Golden::load(name).tokens("input_ids");
        let w4a4 = load(name, ActivationQuant::Mxfp4);
        let whole = last_logits(&w4a4, &ids, &[ids.len()]);
        for chunks in [&[5usize, 2, 9][..], &[1][..]] {
            let cut = last_logits(&w4a4, &ids, chunks);
            for (i, (a, b)) in whole.iter().zip(&cut).enumerate() {
                assert_eq!(a.to_bits(), b.to_bits(), "{name}: logit {i} whole {a} vs in chunks {chunks:?} {b}");
            }
        }
        // The rounding of the activations shows: W4A4 is not the unquantized model.
        let plain = last_logits(&load(name, ActivationQuant::None), &ids, &[ids.len()]);
        let (d, _) = max_diff(&whole, &plain);
        let size = plain.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        eprintln!("{name}: W4A4 vs unquantized max |dlogit| {d:.3e}, logits up to {size:.3e}");
        assert!(d > 1e-4, "{name}: W4A4 logits within {d:e} of the unquantized ones");
        assert!(d < size, "{name}: W4A4 logits {d:e} from the unquantized ones, which reach {size:e}");
    }
}
