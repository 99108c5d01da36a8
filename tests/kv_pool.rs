//! The page table and prefix cache as pure data structures, and the CPU backend's KV store they
//! address: encodings, prefix hits, copy on truncate, and a randomized run of submit / extend /
//! cancel / finish that must end with every page free and every invariant holding after every
//! step.

use kiln::backend::cpu::HostKvStore;
use kiln::kv::{KvFormat, KvGeometry, PageTable, SeqKv};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn geometry() -> KvGeometry {
    KvGeometry { latent: 160, rope: 16, index: 32, indexed: vec![true, false, true] }
}

fn pool(pages: usize) -> PageTable {
    PageTable::new(4, pages, true)
}

#[test]
fn entries_round_trip_in_every_format() {
    let g = geometry();
    let latent: Vec<f32> = (0..g.latent).map(|i| ((i * 37 % 101) as f32 - 50.0) / 7.0).collect();
    let rope: Vec<f32> = (0..g.rope).map(|i| i as f32 / 3.0 - 2.0).collect();
    let key: Vec<f32> = (0..g.index).map(|i| (i as f32 - 16.0) / 5.0).collect();
    for (format, tol) in [(KvFormat::F32, 0.0), (KvFormat::Bf16, 1.0 / 128.0), (KvFormat::Fp8E4m3, 1.0 / 8.0)] {
        let mut p = PageTable::new(4, 2, false);
        let mut store = HostKvStore::new(format, g.clone(), p.total_slots());
        let mut s = SeqKv::default();
        p.reserve(&mut s, 5).unwrap();
        store.write_mla(0, p.slot(&s, 4), &latent, &rope);
        store.write_index(0, p.slot(&s, 4), &key);
        s.len = 5;
        let (mut l, mut r) = (vec![0.0; 5 * g.latent], vec![0.0; 5 * g.rope]);
        store.read_mla(0, p.slot(&s, 4), &mut l[4 * g.latent..], &mut r[4 * g.rope..]);
        let mut k = vec![0.0; 5 * g.index];
        store.read_index(0, p.slot(&s, 4), &mut k[4 * g.index..]);
        let close = |a: &[f32], b: &[f32], amax: f32| {
            a.iter().zip(b).all(|(x, y)| (x - y).abs() <= tol * x.abs().max(amax / 16.0))
        };
        assert!(close(&latent, &l[4 * g.latent..], 7.2), "{format:?} latent");
        // The rope key is bf16 in both bf16 and fp8 layouts.
        assert!(rope.iter().zip(&r[4 * g.rope..]).all(|(x, y)| (x - y).abs() <= x.abs() / 128.0), "{format:?} rope");
        assert!(close(&key, &k[4 * g.index..], 3.2), "{format:?} index");
    }
}

#[test]
fn plan_and_pool_agree_on_entry_sizes() {
    for rel in ["plan/tiny.toml", "plan/glm-5.2-mxfp4-mi355x-tp8.toml"] {
        let text = std::fs::read_to_string(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)).unwrap();
        let plan = kiln::plan::check(&text).unwrap();
        let m = &plan.model;
        let g = KvGeometry {
            latent: m.kv_lora_rank as usize,
            rope: m.qk_rope_head_dim as usize,
            index: m.index_head_dim as usize,
            indexed: vec![true],
        };
        let layout = kiln::plan::kv_layout(&plan);
        let f = KvFormat::from(plan.kv_cache.dtype);
        assert_eq!(
            (f.mla_bytes(&g) as u64, f.index_bytes(&g) as u64),
            (layout.mla_bytes, layout.indexer_bytes),
            "{rel}"
        );
    }
}

#[test]
fn prefix_pages_are_found_and_shared() {
    let mut p = pool(16);
    let prompt: Vec<u32> = (0..11).collect();
    let mut a = SeqKv::default();
    assert_eq!(p.attach_prefix(&mut a, &prompt), 0);
    p.reserve(&mut a, prompt.len()).unwrap();
    a.len = prompt.len();
    p.commit(&mut a, &prompt);
    // Two full pages (8 tokens) are now cached; a second request reuses them.
    let mut b = SeqKv::default();
    assert_eq!(p.attach_prefix(&mut b, &prompt), 8);
    assert_eq!(&b.pages[..2], &a.pages[..2]);
    p.check(&[&a, &b]).unwrap();
    // A different second page breaks the chain after page one.
    let mut other = prompt.clone();
    other[5] = 99;
    let mut c = SeqKv::default();
    assert_eq!(p.attach_prefix(&mut c, &other), 4);
    // Finished requests leave their full pages cached and evictable.
    for s in [&mut a, &mut b, &mut c] {
        p.release(s);
    }
    p.check(&[]).unwrap();
    assert_eq!(p.available_pages(), 16);
    let mut d = SeqKv::default();
    assert_eq!(p.attach_prefix(&mut d, &prompt), 8);
    // Never the whole prompt: the last token is always computed.
    let mut e = SeqKv::default();
    assert_eq!(p.attach_prefix(&mut e, &prompt[..8]), 4);
    p.release(&mut d);
    p.release(&mut e);
    p.check(&[]).unwrap();
}

#[test]
fn truncating_into_a_cached_page_copies_it() {
    let mut p = pool(8);
    let g = geometry();
    let mut store = HostKvStore::new(KvFormat::Bf16, g.clone(), p.total_slots());
    let prompt: Vec<u32> = (0..8).collect();
    let mut a = SeqKv::default();
    p.reserve(&mut a, 8).unwrap();
    for t in 0..8 {
        store.write_mla(0, p.slot(&a, t), &vec![t as f32; g.latent], &vec![0.0; g.rope]);
    }
    a.len = 8;
    p.commit(&mut a, &prompt);
    let cached = a.pages[1];
    if let Some(copy) = p.truncate(&mut a, 6).unwrap() {
        store.copy_page(copy, p.page_size);
    }
    assert_ne!(a.pages[1], cached, "the cached page was written through");
    let (mut l, mut r) = (vec![0.0; g.latent], vec![0.0; g.rope]);
    store.read_mla(0, p.slot(&a, 5), &mut l, &mut r);
    assert_eq!(l[0], 5.0);
    p.check(&[&a]).unwrap();
    // The cached copy is still whole for the next request.
    let mut b = SeqKv::default();
    let longer: Vec<u32> = (0..9).collect();
    assert_eq!(p.attach_prefix(&mut b, &longer), 8);
    p.release(&mut a);
    p.release(&mut b);
    p.check(&[]).unwrap();
}

#[test]
fn out_of_pages_changes_nothing() {
    let mut p = pool(2);
    let mut a = SeqKv::default();
    let err = p.reserve(&mut a, 12).unwrap_err();
    assert_eq!((err.needed, err.free), (3, 2));
    assert!(a.pages.is_empty());
    p.check(&[&a]).unwrap();
}

#[test]
fn random_submit_cancel_finish_ends_with_every_page_free() {
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    let mut p = pool(64);
    // Prompts share prefixes so the cache is exercised.
    let stems: Vec<Vec<u32>> = (0..4).map(|s| (0..12).map(|i| s * 100 + i).collect()).collect();
    let mut live: Vec<(SeqKv, Vec<u32>)> = Vec::new();
    for step in 0..3000 {
        match rng.random_range(0..10) {
            // submit: a stem plus a random tail
            0..=3 => {
                let mut prompt = stems[rng.random_range(0..stems.len())][..rng.random_range(1..12)].to_vec();
                prompt.extend((0..rng.random_range(0..9)).map(|_| rng.random_range(0..1000u32)));
                let mut s = SeqKv::default();
                let cached = p.attach_prefix(&mut s, &prompt);
                assert!(cached < prompt.len().max(1));
                if p.reserve(&mut s, prompt.len()).is_ok() {
                    s.len = prompt.len();
                    p.commit(&mut s, &prompt);
                    live.push((s, prompt));
                } else {
                    p.release(&mut s);
                }
            }
            // decode a token on a random live sequence
            4..=6 if !live.is_empty() => {
                let i = rng.random_range(0..live.len());
                let (s, toks) = &mut live[i];
                if p.reserve(s, s.len + 1).is_ok() {
                    toks.push(rng.random_range(0..1000));
                    s.len += 1;
                    p.commit(s, toks);
                }
            }
            // speculative rollback of up to 3 tokens
            7 if !live.is_empty() => {
                let i = rng.random_range(0..live.len());
                let (s, toks) = &mut live[i];
                let n = s.len.saturating_sub(rng.random_range(0..4)).max(1);
                if p.truncate(s, n).is_ok() {
                    toks.truncate(n);
                }
            }
            // cancel or finish
            _ if !live.is_empty() => {
                let i = rng.random_range(0..live.len());
                let (mut s, _) = live.swap_remove(i);
                p.release(&mut s);
            }
            _ => {}
        }
        let refs: Vec<&SeqKv> = live.iter().map(|(s, _)| s).collect();
        p.check(&refs).unwrap_or_else(|e| panic!("step {step}: {e}"));
    }
    for (mut s, _) in live.drain(..) {
        p.release(&mut s);
    }
    p.check(&[]).unwrap();
    assert_eq!(p.available_pages(), p.total_pages());
    assert_eq!(p.usage(), 0.0);
}
