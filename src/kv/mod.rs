//! The KV cache: a page pool sized from the plan, holding per layer the MLA latent + rope key
//! and, on layers that run the indexer, the indexer key, in bf16 or fp8_e4m3 (or f32 for the
//! reference); page tables per sequence; and a prefix cache over full pages.

pub mod fp8;
mod layout;
mod pool;
mod prefix;

pub use layout::{KvFormat, KvGeometry};
pub use pool::{KvPool, OutOfPages, PageId, SeqKv};
pub use prefix::chain_hash;
