//! Where the weights live and how each module class is stored.

use serde::{Deserialize, Serialize};

use super::pin::WeightsPin;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Weights {
    /// HF model directory (config.json + safetensors). Relative paths are taken from the
    /// directory the binary is started in.
    pub path: String,
    /// Build the model directory's files into the binary (small models only): the binary
    /// then serves with no files beside it. Relative paths are taken from the crate root.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub embed: bool,
    pub quant: QuantRules,
    /// The weights' digests; absent until `kiln plan pin` writes them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pin: Option<WeightsPin>,
}

/// How a linear's weight is stored in the checkpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WeightFormat {
    Bf16,
    /// Unquantized fp32, as HF saves small models built in fp32.
    F32,
    /// AMD Quark MXFP4: E2M1 codes plus one E8M0 scale per 32 inputs (4.25 bits/weight).
    Mxfp4,
}

impl WeightFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            WeightFormat::Bf16 => "bf16",
            WeightFormat::F32 => "f32",
            WeightFormat::Mxfp4 => "mxfp4",
        }
    }
}

/// Whether activations are quantized before MXFP4 linears.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ActivationQuant {
    /// Activations enter MXFP4 linears unquantized (W4A16).
    None,
    /// Dynamic per-32-group MXFP4 activations (W4A4), as Quark exports declare.
    Mxfp4,
}

impl ActivationQuant {
    pub fn as_str(self) -> &'static str {
        match self {
            ActivationQuant::None => "none",
            ActivationQuant::Mxfp4 => "mxfp4",
        }
    }
}

/// The storage format of every module class of the main layers, plus the MTP layer's.
/// Norms, biases and the router's correction bias are not linears and are not listed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuantRules {
    pub activations: ActivationQuant,
    pub embed_tokens: WeightFormat,
    pub lm_head: WeightFormat,
    /// MLA projections: q_a, q_b, kv_a_proj_with_mqa, kv_b, o_proj.
    pub attention: WeightFormat,
    /// DSA indexer: wq_b, wk, weights_proj.
    pub indexer: WeightFormat,
    /// MoE router (`mlp.gate`).
    pub router: WeightFormat,
    /// Dense MLP of the first layers.
    pub dense_mlp: WeightFormat,
    pub routed_experts: WeightFormat,
    pub shared_experts: WeightFormat,
    /// The MTP layer's own rules; required when the model has MTP layers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtp: Option<MtpQuantRules>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MtpQuantRules {
    pub eh_proj: WeightFormat,
    pub attention: WeightFormat,
    pub indexer: WeightFormat,
    pub router: WeightFormat,
    pub routed_experts: WeightFormat,
    pub shared_experts: WeightFormat,
}

/// A family of linears that share one quant rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ModuleClass {
    EmbedTokens,
    LmHead,
    Attention,
    Indexer,
    Router,
    DenseMlp,
    RoutedExperts,
    SharedExperts,
    /// The MTP layer's input projection over concat[enorm(e), hnorm(h)].
    EhProj,
    /// RMSNorm / LayerNorm vectors and biases: always stored as in the checkpoint.
    Norms,
}

impl ModuleClass {
    /// The key of this class under `weights.quant` (or `weights.quant.mtp`).
    pub fn key(self) -> &'static str {
        match self {
            ModuleClass::EmbedTokens => "embed_tokens",
            ModuleClass::LmHead => "lm_head",
            ModuleClass::Attention => "attention",
            ModuleClass::Indexer => "indexer",
            ModuleClass::Router => "router",
            ModuleClass::DenseMlp => "dense_mlp",
            ModuleClass::RoutedExperts => "routed_experts",
            ModuleClass::SharedExperts => "shared_experts",
            ModuleClass::EhProj => "eh_proj",
            ModuleClass::Norms => "norms",
        }
    }

    /// Full plan key path of the rule for this class.
    pub fn plan_key(self, mtp: bool) -> String {
        if mtp { format!("weights.quant.mtp.{}", self.key()) } else { format!("weights.quant.{}", self.key()) }
    }
}

impl QuantRules {
    /// The format the plan asks for; `None` for classes no rule covers (norms, or an MTP
    /// class when the plan has no MTP rules).
    pub fn format(&self, class: ModuleClass, mtp: bool) -> Option<WeightFormat> {
        if mtp {
            let m = self.mtp.as_ref()?;
            return match class {
                ModuleClass::EhProj => Some(m.eh_proj),
                ModuleClass::Attention => Some(m.attention),
                ModuleClass::Indexer => Some(m.indexer),
                ModuleClass::Router => Some(m.router),
                ModuleClass::RoutedExperts => Some(m.routed_experts),
                ModuleClass::SharedExperts => Some(m.shared_experts),
                _ => None,
            };
        }
        match class {
            ModuleClass::EmbedTokens => Some(self.embed_tokens),
            ModuleClass::LmHead => Some(self.lm_head),
            ModuleClass::Attention => Some(self.attention),
            ModuleClass::Indexer => Some(self.indexer),
            ModuleClass::Router => Some(self.router),
            ModuleClass::DenseMlp => Some(self.dense_mlp),
            ModuleClass::RoutedExperts => Some(self.routed_experts),
            ModuleClass::SharedExperts => Some(self.shared_experts),
            ModuleClass::EhProj | ModuleClass::Norms => None,
        }
    }
}
