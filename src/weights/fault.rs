//! A weights file that stops being readable under a live server (truncated, replaced, its
//! disk gone) faults the next access to its mapping with SIGBUS. This keeps a table of the
//! mapped files, readable from a signal handler, and the handler `kiln serve` installs: it
//! writes one log line naming the file and exits with `EXIT_WEIGHTS_FAULT`, so the process
//! neither dies silently nor runs on with a corrupt view.
//!
//! Everything the handler touches is async-signal-safe: atomics, a fixed table of ranges
//! and messages prepared when the file was mapped, write(2) and _exit(2).

use std::path::Path;
use std::sync::atomic::{AtomicPtr, AtomicU8, AtomicUsize, Ordering};

/// Exit status after a weights file faulted (sysexits' EX_IOERR). Start-up checks the files
/// again, so the systemd unit restarts on it.
pub const EXIT_WEIGHTS_FAULT: i32 = 74;

/// Mapped files tracked at once; a mapping beyond is served without a name in the message.
const SLOTS: usize = 256;

struct Slot {
    /// 0 = free, 1 = being written, 2 = live.
    state: AtomicU8,
    start: AtomicUsize,
    end: AtomicUsize,
    text: AtomicPtr<u8>,
    text_len: AtomicUsize,
    json: AtomicPtr<u8>,
    json_len: AtomicUsize,
}

#[allow(clippy::declare_interior_mutable_const)]
const EMPTY: Slot = Slot {
    state: AtomicU8::new(0),
    start: AtomicUsize::new(0),
    end: AtomicUsize::new(0),
    text: AtomicPtr::new(std::ptr::null_mut()),
    text_len: AtomicUsize::new(0),
    json: AtomicPtr::new(std::ptr::null_mut()),
    json_len: AtomicUsize::new(0),
};

static TABLE: [Slot; SLOTS] = [EMPTY; SLOTS];
/// Whether the handler writes JSON (the log format at install time).
static JSON: AtomicU8 = AtomicU8::new(0);

/// The message for an address outside every tracked mapping.
const UNKNOWN_TEXT: &[u8] = b"error kiln: SIGBUS outside any tracked weights file; exiting with status 74\n";
const UNKNOWN_JSON: &[u8] =
    b"{\"level\":\"error\",\"event\":\"weights_fault\",\"msg\":\"SIGBUS outside any tracked weights file; exiting with status 74\"}\n";

fn leak(s: String) -> (*mut u8, usize) {
    let b: &'static mut [u8] = Box::leak(s.into_bytes().into_boxed_slice());
    (b.as_mut_ptr(), b.len())
}

/// Tracks the mapping [start, start + len) of `path`; returns its slot for `untrack`.
pub fn track(start: usize, len: usize, path: &Path) -> Option<usize> {
    let i = TABLE.iter().position(|s| s.state.compare_exchange(0, 1, Ordering::AcqRel, Ordering::Acquire).is_ok())?;
    let slot = &TABLE[i];
    let shown = path.display().to_string();
    let msg = format!(
        "the weights file {shown} can no longer be read (truncated or replaced under the server): exiting with status {EXIT_WEIGHTS_FAULT}"
    );
    let (text, text_len) = leak(format!("error kiln: {msg}\n"));
    let json = serde_json::json!({"level": "error", "event": "weights_fault", "msg": msg, "file": shown});
    let (json, json_len) = leak(format!("{json}\n"));
    slot.start.store(start, Ordering::Release);
    slot.end.store(start + len, Ordering::Release);
    slot.text.store(text, Ordering::Release);
    slot.text_len.store(text_len, Ordering::Release);
    slot.json.store(json, Ordering::Release);
    slot.json_len.store(json_len, Ordering::Release);
    slot.state.store(2, Ordering::Release);
    Some(i)
}

/// The mapping is gone (its messages stay: they are a few hundred bytes).
pub fn untrack(i: usize) {
    if let Some(slot) = TABLE.get(i) {
        slot.state.store(0, Ordering::Release);
    }
}

/// Installs the SIGBUS handler (once, before serving).
pub fn install(json_log: bool) -> crate::error::Result<()> {
    use nix::sys::signal::{SaFlags, SigAction, SigHandler, SigSet, Signal, sigaction};
    JSON.store(u8::from(json_log), Ordering::Release);
    let action = SigAction::new(SigHandler::SigAction(on_sigbus), SaFlags::SA_SIGINFO, SigSet::empty());
    // SAFETY: the handler only reads atomics and calls write(2) and _exit(2).
    unsafe { sigaction(Signal::SIGBUS, &action) }
        .map(|_| ())
        .map_err(|e| crate::error::Error::Usage(format!("cannot install the SIGBUS handler: {e}")))
}

extern "C" fn on_sigbus(_signal: libc::c_int, info: *mut libc::siginfo_t, _context: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo for SA_SIGINFO handlers.
    let addr = unsafe { (*info).si_addr() } as usize;
    let json = JSON.load(Ordering::Acquire) == 1;
    let (mut ptr, mut len) =
        if json { (UNKNOWN_JSON.as_ptr(), UNKNOWN_JSON.len()) } else { (UNKNOWN_TEXT.as_ptr(), UNKNOWN_TEXT.len()) };
    for s in &TABLE {
        if s.state.load(Ordering::Acquire) == 2
            && (s.start.load(Ordering::Acquire)..s.end.load(Ordering::Acquire)).contains(&addr)
        {
            (ptr, len) = if json {
                (s.json.load(Ordering::Acquire) as *const u8, s.json_len.load(Ordering::Acquire))
            } else {
                (s.text.load(Ordering::Acquire) as *const u8, s.text_len.load(Ordering::Acquire))
            };
            break;
        }
    }
    // SAFETY: ptr/len describe a leaked (never freed) or static message; write and _exit are
    // async-signal-safe.
    unsafe {
        libc::write(2, ptr as *const libc::c_void, len);
        libc::_exit(EXIT_WEIGHTS_FAULT);
    }
}
