//! Engine-level helpers shared by the engine tests.

use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use kiln::backend::Backend;
use kiln::engine::{self, EngineConfig, EngineHandle};
use kiln::metrics::Metrics;
use kiln::model::Model;

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

/// An engine that is stopped and joined when dropped: its thread frees the KV cache (device
/// memory on a GPU backend) as it ends, which must not race the device's teardown at exit.
#[allow(dead_code)]
pub struct JoinedEngine {
    handle: Option<EngineHandle>,
    thread: Option<JoinHandle<()>>,
}

#[allow(dead_code)]
impl JoinedEngine {
    pub fn spawn<B: Backend>(model: Arc<Model<B>>, cfg: EngineConfig, metrics: Arc<Metrics>) -> JoinedEngine {
        let (handle, thread) = engine::spawn(model, cfg, metrics);
        JoinedEngine { handle: Some(handle), thread: Some(thread) }
    }
}

impl std::ops::Deref for JoinedEngine {
    type Target = EngineHandle;
    fn deref(&self) -> &EngineHandle {
        self.handle.as_ref().expect("running until dropped")
    }
}

impl Drop for JoinedEngine {
    fn drop(&mut self) {
        drop(self.handle.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
