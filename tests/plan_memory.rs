//! The planner's GLM-5.2 figures against an independent calculation written from the
//! checkpoint's tensor shapes (the GLM-DSA spec, section 2), and the inventory
//! against the tensor-name list.

mod common;

use common::*;
use kiln::plan::{self, ModuleClass, StoredFormat, memory_report, weight_inventory};
use kiln::weights::glm::TensorTable;

/// Bytes per device of GLM-5.2 with experts MXFP4 (4.25 bits per weight), everything else
/// bf16, the MTP layer's shared expert bf16, split over `tp` ranks (ep = 1): the main model
/// and the MTP layer apart, and the main model's routed-expert bytes.
struct Glm52 {
    main: f64,
    mtp: f64,
    routed_experts: f64,
    embed: f64,
}

fn glm52(tp: f64) -> Glm52 {
    let bf16 = |r: f64, c: f64| r * c * 2.0;
    let mx = |r: f64, c: f64| r * c * 4.25 / 8.0;
    let (d, v, h) = (6144.0, 154880.0, 64.0);

    let embed = bf16((v / tp).ceil(), d);
    let attention = bf16(2048.0, d)                 // q_a_proj (replicated)
        + bf16(2048.0, 1.0)                          // q_a_layernorm
        + bf16(h * 256.0 / tp, 2048.0)               // q_b_proj
        + bf16(576.0, d)                             // kv_a_proj_with_mqa (replicated)
        + bf16(512.0, 1.0)                           // kv_a_layernorm
        + bf16(h * 448.0 / tp, 512.0)                // kv_b_proj
        + bf16(d, h * 256.0 / tp)                    // o_proj
        + 2.0 * bf16(d, 1.0); // input / post-attention norms
    let indexer = bf16(32.0 * 128.0, 2048.0) + bf16(128.0, d) + 2.0 * bf16(128.0, 1.0) + bf16(32.0, d);
    let dense = 3.0 * bf16(12288.0 / tp, d); // gate, up, down: each 12288/tp x 6144
    let router = bf16(256.0, d) + 256.0 * 4.0; // + f32 correction bias
    let experts = 256.0 * 3.0 * mx(2048.0 / tp, d);
    let shared_mx = 3.0 * mx(2048.0 / tp, d);
    let shared_bf16 = 3.0 * bf16(2048.0 / tp, d);

    Glm52 {
        main: 2.0 * embed
            + bf16(d, 1.0)
            + 78.0 * attention
            + 21.0 * indexer
            + 3.0 * dense
            + 75.0 * (router + experts + shared_mx),
        mtp: 3.0 * bf16(d, 1.0) + bf16(d, 2.0 * d) + attention + indexer + router + experts + shared_bf16,
        routed_experts: 75.0 * experts,
        embed,
    }
}

fn close(a: f64, b: f64, rel: f64) -> bool {
    (a - b).abs() <= rel * b.abs().max(1.0)
}

#[test]
fn glm52_tp4_and_tp8_figures_match_hand_calculation() {
    for (rel, tp) in [(GLM_TP4DP2, 4.0), (GLM_TP8, 8.0)] {
        let plan = plan::check(&read_plan_text(rel)).unwrap();
        let r = memory_report(&plan);
        let g = glm52(tp);
        let want = g.main + g.mtp;
        assert!(
            close(r.weights_bytes_per_device as f64, want, 1e-12),
            "{rel}: {} vs {want}",
            r.weights_bytes_per_device
        );

        // 79 layers (78 + MTP) x (512 fp8 latent + 4 f32 scales + 64 bf16 rope) and
        // 22 indexer layers (21 + MTP) x (128 fp8 + one f32 scale).
        let kv = 79 * (512 + 16 + 128) + 22 * (128 + 4);
        assert_eq!(r.kv_bytes_per_token, kv);
        assert_eq!(kv, 54728);

        let usable = 288e9 * 0.9;
        assert!(close(r.usable_bytes_per_device, usable, 1e-12));
        assert_eq!(r.kv_tokens_per_device, ((usable - want) / kv as f64).floor() as u64);

        // A decode token reads the main model but the unchosen experts (8 of 256 are read)
        // and all but one embedding row.
        let decode = g.main - g.routed_experts * (1.0 - 8.0 / 256.0) - g.embed * (1.0 - 1.0 / 154880.0);
        assert!(
            close(r.decode_weight_bytes_per_token, decode, 1e-9),
            "{rel}: {} vs {decode}",
            r.decode_weight_bytes_per_token
        );
        assert!(close(r.decode_roofline_tok_s, 8000e9 / decode, 1e-9));
    }
}

#[test]
fn glm52_headline_numbers() {
    // The figures the README quotes, to two decimals.
    let r = memory_report(&plan::check(&read_plan_text(GLM_TP4DP2)).unwrap());
    assert_eq!(plan::gb(r.weights_bytes_per_device as f64), "108.46 GB");
    assert_eq!(r.kv_tokens_per_device, 2_754_301);
    assert_eq!(format!("{:.0}", r.decode_roofline_tok_s), "608");
    let r = memory_report(&plan::check(&read_plan_text(GLM_TP8)).unwrap());
    assert_eq!(plan::gb(r.weights_bytes_per_device as f64), "55.91 GB");
    assert_eq!(format!("{:.0}", r.decode_roofline_tok_s), "982");
}

#[test]
fn glm52_experts_are_the_published_size() {
    // 75 MoE layers x 257 experts (256 routed + shared)
    // x 20.05 MB in MXFP4 = 386.5 GB, the ~384 GB people quote for the MXFP4 experts.
    let plan = plan::check(&read_plan_text(GLM_TP8)).unwrap();
    let experts: f64 = weight_inventory(&plan)
        .iter()
        .filter(|g| !g.mtp && matches!(g.class, ModuleClass::RoutedExperts | ModuleClass::SharedExperts))
        .map(|g| g.total_bytes() as f64)
        .sum();
    assert!((experts / 1e9 - 386.5).abs() < 0.1, "{experts}");
    // The whole checkpoint adds ~37 GB of bf16 attention, embeddings and the MTP layer.
    let total = memory_report(&plan).weights_bytes_total as f64;
    assert!((420e9..430e9).contains(&total), "{total}");
}

#[test]
fn inventory_matches_tensor_names() {
    // The planner's grouped inventory and the name list must describe the same bytes.
    for rel in [TINY, GLM_TP4DP2] {
        let plan = plan::check(&read_plan_text(rel)).unwrap();
        let table = TensorTable::new(&plan.model);
        let mut from_names: u64 = table.vectors().iter().map(|v| v.len * if v.f32_only { 4 } else { 2 }).sum();
        for l in &table.linears() {
            let f = plan.weights.quant.format(l.class, l.mtp).map(StoredFormat::from).unwrap_or(StoredFormat::Bf16);
            from_names += f.bytes(l.rows, l.cols);
        }
        let from_inventory: u64 = weight_inventory(&plan).iter().map(|g| g.total_bytes()).sum();
        assert_eq!(from_names, from_inventory, "{rel}");
    }
}

#[test]
fn glm52_tensor_count() {
    // 791 tensors in layer 78 of the bf16 release (spec section 2.3).
    let plan = plan::check(&read_plan_text(GLM_TP4DP2)).unwrap();
    let table = TensorTable::new(&plan.model);
    let in_78 = table.linears().iter().filter(|l| l.module.starts_with("model.layers.78.")).count()
        + table.vectors().iter().filter(|v| v.name.starts_with("model.layers.78.")).count();
    assert_eq!(in_78, 791);
}
