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
