//! Process set-up before serving: as many open files as the hard limit allows (every client
//! connection is one), and the handler that names a weights file that faults.

use nix::sys::resource::{Resource, getrlimit, setrlimit};

use crate::error::Result;
use crate::log::{self, LogFormat};

/// Returns the open-files limit the process now runs under (None if it cannot be read).
pub fn prepare() -> Result<Option<u64>> {
    let files = raise_open_files();
    crate::weights::fault::install(log::format() == LogFormat::Json)?;
    Ok(files)
}

/// Raises the soft open-files limit to the hard one and logs both.
fn raise_open_files() -> Option<u64> {
    let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else {
        log::warn("open_files", "cannot read the open-files limit").emit();
        return None;
    };
    let raised = soft < hard && setrlimit(Resource::RLIMIT_NOFILE, hard, hard).is_ok();
    let now = if raised { hard } else { soft };
    log::info("open_files", format!("open files: soft limit {now} (was {soft}), hard limit {hard}"))
        .field("soft", now)
        .field("was", soft)
        .field("hard", hard)
        .emit();
    Some(now)
}
