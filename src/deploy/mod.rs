//! The commands an operator runs on a node: `kiln serve` (signals, drain, the weights pin),
//! `kiln verify [--full]`, `kiln plan pin` and `kiln plan kernels`.

mod foreground;
mod kernel_map;
pub mod lifecycle;
mod pin;
mod process;
mod serve;
mod verify;
mod weights_watch;

pub use kernel_map::{default_kernel_map, write_entries_into};
pub use pin::pin_plan;
pub use serve::{serve, source};
pub use verify::verify;

/// Exit status when the weights are not what the plan says (sysexits' EX_DATAERR): a
/// restart cannot fix it, so the systemd unit does not restart on it.
pub const EXIT_WEIGHTS: u8 = 65;

/// Exit status when a GPU appliance finds no device to run on (sysexits' EX_UNAVAILABLE): it
/// never falls back to the CPU.
pub const EXIT_NO_DEVICE: u8 = 69;
