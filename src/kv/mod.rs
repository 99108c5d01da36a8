//! The KV cache, split in two: the host page table (page ids, refcounts, free list, prefix
//! cache over full pages: pure data, what the engine touches) and the entry layout (per layer
//! the MLA latent + rope key and, on layers that run the indexer, the indexer key, in bf16 or
//! fp8_e4m3, or f32 for the reference). The bytes live in the backend's KV store, written and
//! read in place by the forward's ops at the slots the page table hands out.

pub mod fp8;
mod layout;
mod page_table;
mod prefix;

pub use layout::{KvFormat, KvGeometry};
pub use page_table::{OutOfPages, PageCopy, PageId, PageTable, SeqKv};
pub use prefix::chain_hash;
