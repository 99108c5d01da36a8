//! The plan build.rs baked into this binary.

use std::sync::OnceLock;

use crate::plan::{self, Plan};

/// The plan text exactly as it was read at build time.
pub const PLAN_TEXT: &str = include_str!(concat!(env!("OUT_DIR"), "/plan.toml"));
/// blake3 of PLAN_TEXT, hex.
pub const PLAN_HASH: &str = env!("KILN_PLAN_HASH");
/// The file the plan was read from on the build host.
pub const PLAN_SOURCE: &str = env!("KILN_PLAN_SOURCE");

/// The baked plan, parsed once.
pub fn plan() -> &'static Plan {
    static PLAN: OnceLock<Plan> = OnceLock::new();
    PLAN.get_or_init(|| match plan::check(PLAN_TEXT) {
        Ok(p) => p,
        // build.rs ran this same check on this same text; failing here is a kiln bug.
        Err(problems) => panic!("baked plan no longer validates:\n{}", plan::render_problems(plan::IN_PLAN, &problems)),
    })
}

/// blake3 of plan text, as the build hashes it.
pub fn hash_text(text: &str) -> String {
    blake3::hash(text.as_bytes()).to_hex().to_string()
}

/// A kernel code object build.rs compiled for the plan's GPU.
#[derive(Debug, Clone, Copy)]
pub struct CodeObject {
    /// kernels/<source>
    pub source: &'static str,
    pub arch: &'static str,
    /// The extern "C" kernels the plan uses from it.
    pub symbols: &'static [&'static str],
    pub bytes: &'static [u8],
}

mod code_objects {
    use super::CodeObject;
    // `CODE_OBJECTS`: every kernel code object of the plan (none for the cpu target).
    include!(concat!(env!("OUT_DIR"), "/code_objects.rs"));
}

pub use code_objects::CODE_OBJECTS;

mod embedded {
    // `EMBEDDED_FILES`: (file name, bytes) of the model directory when the plan embeds it.
    include!(concat!(env!("OUT_DIR"), "/embedded.rs"));
}

/// The model directory built into the binary, if the plan embeds one.
pub fn embedded_files() -> Option<&'static [(&'static str, &'static [u8])]> {
    (!embedded::EMBEDDED_FILES.is_empty()).then_some(embedded::EMBEDDED_FILES)
}
