//! The CPU forward's hot path allocates per op, never per token, per sequence nor per key: a
//! step's per-token and per-expert buffers (attention's, the indexer's scores and selection,
//! the router's, each expert's MLP) come from the scratch pool, and its outputs are one buffer
//! per op. Counted by a global allocator over every thread, once the pools have grown
//! to the step's sizes.
//!
//! One test in this binary: the count is process-wide, so nothing else may run beside it.

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

use kiln::backend::Backend;
use kiln::backend::cpu::Cpu;
use kiln::kv::{KvFormat, PageTable, SeqKv};
use kiln::model::{Model, SeqCache, StepBatch};
use kiln::plan;
use kiln::weights::WeightsSource;

/// Counts every allocation (and growth) of the process.
struct Counting;

static ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every call is passed on to the system allocator unchanged.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Relaxed);
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Relaxed);
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Relaxed);
        unsafe { System.realloc(ptr, layout, size) }
    }
}

#[global_allocator]
static COUNTING: Counting = Counting;

/// Allocations a step may differ by for reasons of the thread pool's own (its queues grow
/// and shrink with how the work was stolen). A buffer per token in any op of the demo
/// model's four layers would add over a hundred between the sizes compared.
const NOISE: usize = 24;

fn demo_model() -> Model {
    let plan = plan::check(&common::read_plan_text(common::TINY)).unwrap();
    let src = WeightsSource::Dir(common::repo_path("models/tiny"));
    Model::load(&plan, &src.checkpoint().unwrap()).unwrap()
}

/// Ids of a prompt that the demo's tokenizer would not make special.
fn ids(n: usize, salt: u32) -> Vec<u32> {
    (0..n as u32).map(|i| 300 + (i * 7 + salt * 13) % 3000).collect()
}

/// A cache holding a `context`-token prompt.
fn primed(model: &Model, context: usize) -> SeqCache<Cpu> {
    let mut cache = model.new_cache();
    model.forward(&ids(context, 0), &mut cache, None).unwrap();
    cache
}

/// Allocations of a forward of `width` tokens after `context`, the third of three such
/// forwards (the first two grow the pools to its sizes).
fn step_allocations(model: &Model, context: usize, width: usize) -> usize {
    let mut counts = Vec::new();
    for round in 0..3 {
        let mut cache = primed(model, context);
        let before = ALLOCATIONS.load(Relaxed);
        model.forward(&ids(width, 1 + round), &mut cache, None).unwrap();
        counts.push(ALLOCATIONS.load(Relaxed) - before);
    }
    counts[2]
}

/// Allocations of one decode step of `seqs` sequences (a token each, every row's greedy token
/// returned, as the engine decodes) after 100 tokens each, the third of three such steps. The
/// step batch is built before counting: its page tables are the engine's.
fn batch_step_allocations(model: &Model, seqs: usize) -> usize {
    const PAGE: usize = 16;
    let mut counts = Vec::new();
    for round in 0..3 {
        let mut table = PageTable::new(PAGE, seqs * 8, false);
        let mut kv = model.backend.kv_store(KvFormat::Bf16, model.kv_geometry(), table.total_slots()).unwrap();
        let mut kvs = vec![SeqKv::default(); seqs];
        for (s, seq) in kvs.iter_mut().enumerate() {
            table.reserve(seq, 100).unwrap();
            let mut prompt = StepBatch::new(PAGE);
            prompt.push(seq, &ids(100, s as u32));
            prompt.argmax_rows = vec![99];
            model.step(&prompt, &mut kv, None).unwrap();
            seq.len = 100;
        }
        let mut step = StepBatch::new(PAGE);
        for (s, seq) in kvs.iter_mut().enumerate() {
            table.reserve(seq, 101).unwrap();
            step.push(seq, &ids(1, (round * 97 + s) as u32));
        }
        step.argmax_rows = (0..seqs).collect();
        let before = ALLOCATIONS.load(Relaxed);
        model.step(&step, &mut kv, None).unwrap();
        counts.push(ALLOCATIONS.load(Relaxed) - before);
    }
    counts[2]
}

#[test]
fn a_step_allocates_per_op_not_per_token_nor_per_key() {
    let model = demo_model();
    // Past index_topk (64): the sparse layers score and select keys.
    let context = 200;
    let two = step_allocations(&model, context, 2);
    let wide = step_allocations(&model, context, 40);
    assert!(wide <= two + NOISE, "a step of 40 tokens made {wide} allocations, one of 2 made {two}");
    // Attention and the indexer read three times the keys.
    let long = step_allocations(&model, 3 * context, 2);
    assert!(long <= two + NOISE, "2 tokens after {} made {long} allocations, after {context} {two}", 3 * context);
    // A prompt chunk: 256 tokens against 64 (both past index_topk's reach).
    let chunk = step_allocations(&model, 100, 64);
    let long_chunk = step_allocations(&model, 100, 256);
    assert!(long_chunk <= chunk + NOISE, "a 256-token chunk made {long_chunk} allocations, a 64-token one {chunk}");
    // A decode batch: each sequence's keys scored and attended on their own.
    let (pair, many) = (batch_step_allocations(&model, 2), batch_step_allocations(&model, 24));
    assert!(many <= pair + NOISE, "a step of 24 sequences made {many} allocations, one of 2 made {pair}");
    // Not a test that cannot fail: a step does allocate (its outputs, one buffer per op).
    assert!(two > 0 && pair > 0);
}
