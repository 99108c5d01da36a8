//! Engine-level helpers shared by the engine tests.

use std::time::{Duration, Instant};

use kiln::engine::EngineHandle;

/// Waits (at most 30 s) until nothing runs or waits and every KV page is free again,
/// checking the pool's integrity on every look.
pub fn wait_until_idle(h: &EngineHandle) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let r = h.inspect().unwrap();
        r.integrity.clone().unwrap();
        if r.running == 0 && r.waiting == 0 && r.available_pages == r.total_pages {
            return;
        }
        assert!(Instant::now() < deadline, "pages still held: {r:?}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Six prompts of mixed lengths (5 to 60 tokens) over a vocabulary of `vocab`.
pub fn prompts(vocab: u32) -> Vec<Vec<u32>> {
    [5usize, 17, 40, 3, 60, 23]
        .iter()
        .enumerate()
        .map(|(k, &n)| (0..n).map(|i| ((i * 31 + k * 7 + 1) as u32) % vocab).collect())
        .collect()
}
