//! Process set-up before serving: as many open files as the hard limit allows (every client
//! connection is one), and the handler that names a weights file that faults.

use nix::sys::resource::{Resource, getrlimit, setrlimit};

use crate::error::Result;
use crate::log::{self, LogFormat};

pub fn prepare() -> Result<()> {
    raise_open_files();
    crate::weights::fault::install(log::format() == LogFormat::Json)
}

/// Raises the soft open-files limit to the hard one and logs both.
fn raise_open_files() {
    let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else {
        log::warn("open_files", "cannot read the open-files limit").emit();
        return;
    };
    let raised = soft < hard && setrlimit(Resource::RLIMIT_NOFILE, hard, hard).is_ok();
    let now = if raised { hard } else { soft };
    log::info("open_files", format!("open files: soft limit {now} (was {soft}), hard limit {hard}"))
        .field("soft", now)
        .field("was", soft)
        .field("hard", hard)
        .emit();
}
