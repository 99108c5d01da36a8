//! SIGTERM, SIGINT and SIGHUP as events delivered on one thread.
//!
//! The signals are blocked before any other thread exists, so every thread inherits the mask
//! and only the waiting thread, in `sigwait`, ever sees them: no async-signal-safety rules
//! apply to what happens next.

use nix::sys::signal::{SigSet, SigmaskHow, Signal as NixSignal, pthread_sigmask};

use crate::error::{Error, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// SIGTERM or SIGINT: stop taking requests, drain, exit.
    Terminate(&'static str),
    /// SIGHUP: the plan is baked in, so there is nothing to reload.
    Hangup,
}

/// The blocked set, ready to be waited on.
pub struct Signals {
    set: SigSet,
}

/// Blocks SIGTERM, SIGINT and SIGHUP in the calling thread. Call it before starting threads.
pub fn block() -> Result<Signals> {
    let mut set = SigSet::empty();
    for s in [NixSignal::SIGTERM, NixSignal::SIGINT, NixSignal::SIGHUP] {
        set.add(s);
    }
    pthread_sigmask(SigmaskHow::SIG_BLOCK, Some(&set), None)
        .map_err(|e| Error::Usage(format!("cannot block signals: {e}")))?;
    Ok(Signals { set })
}

impl Signals {
    /// Waits for the signals on a thread of its own and hands each to `deliver`.
    pub fn forward(self, deliver: impl Fn(Signal) + Send + 'static) -> Result<()> {
        std::thread::Builder::new()
            .name("kiln-signals".into())
            .spawn(move || {
                loop {
                    match self.set.wait() {
                        Ok(NixSignal::SIGTERM) => deliver(Signal::Terminate("SIGTERM")),
                        Ok(NixSignal::SIGINT) => deliver(Signal::Terminate("SIGINT")),
                        Ok(NixSignal::SIGHUP) => deliver(Signal::Hangup),
                        Ok(_) => {}
                        Err(e) => {
                            crate::log::error("signals", format!("sigwait failed: {e}; signals are no longer handled"))
                                .emit();
                            return;
                        }
                    }
                }
            })
            .map(|_| ())
            .map_err(|e| Error::Usage(format!("cannot start the signal thread: {e}")))
    }
}
