//! Bakes the deployment plan into the binary.
//!
//! Reads the plan named by `KILN_PLAN` (default plan/tiny.toml), parses and validates it with
//! the runtime's own code (src/plan), and writes the plan text and its hash where src/baked.rs
//! picks them up. An invalid plan fails the build with every problem listed.

#[allow(dead_code, unused_imports)]
#[path = "src/plan/mod.rs"]
mod plan;

/// The tensor table the plan's memory inventory sums, at the library's path for it.
#[allow(dead_code)]
#[path = "src/weights/glm.rs"]
mod glm;
mod weights {
    pub(crate) use super::glm;
}

#[path = "build_support/kernel_compile.rs"]
mod kernel_compile;

#[path = "build_support/emulated_kernels.rs"]
mod emulated_kernels;

use std::path::{Path, PathBuf};

const DEFAULT_PLAN: &str = "plan/tiny.toml";

fn main() {
    let manifest_dir = build_helper::cargo::manifest::dir();
    // build-helper 0.1 has no helper for these two directives.
    println!("cargo:rerun-if-env-changed=KILN_PLAN");
    build_helper::rerun_if_changed("src/plan");
    build_helper::rerun_if_changed("build.rs");
    build_helper::rerun_if_changed("build_support");
    build_helper::rerun_if_changed("kernels");
    println!("cargo:rerun-if-env-changed=HIPCC");
    println!("cargo:rerun-if-env-changed=KILN_HIP_CLANG");
    println!("cargo:rerun-if-env-changed=KILN_HIP_CPU");
    println!("cargo:rerun-if-env-changed=KILN_EMULATED_CXX");

    let requested = std::env::var("KILN_PLAN").unwrap_or_else(|_| DEFAULT_PLAN.to_string());
    let plan_path = resolve(&manifest_dir, &requested);
    build_helper::rerun_if_changed(&plan_path);
    let text = std::fs::read_to_string(&plan_path)
        .unwrap_or_else(|e| fail(&format!("KILN_PLAN = {}: cannot read the plan: {e}", plan_path.display())));

    let plan = match plan::check(&text) {
        Ok(plan) => plan,
        Err(problems) => fail(&format!("{}: {}", plan_path.display(), plan::render_problems(plan::IN_PLAN, &problems))),
    };

    let out = build_helper::out_dir();
    write(&out.join("plan.toml"), text.as_bytes());
    write(&out.join("embedded.rs"), embedded_files(&manifest_dir, &plan).as_bytes());
    write(&out.join("code_objects.rs"), code_objects(&manifest_dir, &out, &plan).as_bytes());
    if std::env::var_os("CARGO_FEATURE_EMULATED_HIP").is_some() {
        let lib = emulated_library(&manifest_dir, &out);
        println!("cargo:rustc-env=KILN_EMULATED_LIB={}", lib.display());
    }
    let hash = blake3::hash(text.as_bytes()).to_hex().to_string();
    println!("cargo:rustc-env=KILN_PLAN_HASH={hash}");
    println!("cargo:rustc-env=KILN_PLAN_SOURCE={}", plan_path.display());
    println!("cargo:rustc-env=KILN_PLAN_NAME={}", plan.appliance.name);
}

/// Files of a model directory that serving reads; the first three must exist.
const MODEL_FILES: &[(&str, bool)] = &[
    ("config.json", true),
    ("tokenizer.json", true),
    ("model.safetensors", true),
    ("tokenizer_config.json", false),
    ("generation_config.json", false),
    ("chat_template.jinja", false),
];

/// With `weights.embed`, Rust source for `EMBEDDED_FILES`: the model directory's files as
/// include_bytes! (sharded checkpoints are not embedded: embedding is for small models).
fn embedded_files(manifest_dir: &Path, plan: &plan::Plan) -> String {
    if !plan.weights.embed {
        return "pub const EMBEDDED_FILES: &[(&str, &[u8])] = &[];\n".into();
    }
    let dir = resolve(manifest_dir, &plan.weights.path);
    let mut entries = String::new();
    let mut missing = Vec::new();
    for (name, required) in MODEL_FILES {
        let path = dir.join(name);
        build_helper::rerun_if_changed(&path);
        if path.is_file() {
            entries.push_str(&format!("    ({name:?}, include_bytes!({:?})),\n", path.display().to_string()));
        } else if *required {
            missing.push(path.display().to_string());
        }
    }
    if !missing.is_empty() {
        fail(&format!(
            "weights.embed = true but the model directory lacks: {}\n(train it with tools/train_demo.py, or set weights.embed = false)",
            missing.join(", ")
        ));
    }
    if let Some(pin) = &plan.weights.pin {
        check_embedded_pin(&dir, pin);
    }
    format!("pub const EMBEDDED_FILES: &[(&str, &[u8])] = &[\n{entries}];\n")
}

/// Embedded weights are at hand at build time, so a pin that does not match them is a build
/// error rather than a binary that refuses to start.
fn check_embedded_pin(dir: &Path, pin: &plan::WeightsPin) {
    let mut problems = Vec::new();
    for f in &pin.files {
        let path = dir.join(&f.name);
        match std::fs::read(&path) {
            Err(e) => problems.push(format!("{}: {e}", path.display())),
            Ok(bytes) => {
                let got = blake3::hash(&bytes).to_hex().to_string();
                if bytes.len() as u64 != f.bytes || got != f.blake3 {
                    problems.push(format!(
                        "{} is {} bytes with blake3 {got}, but weights.pin says {} bytes with blake3 {}",
                        path.display(),
                        bytes.len(),
                        f.bytes,
                        f.blake3
                    ));
                }
            }
        }
    }
    for (name, _) in MODEL_FILES {
        if dir.join(name).is_file() && pin.file(name).is_none() {
            problems.push(format!("{name} is embedded but weights.pin does not cover it"));
        }
    }
    if !problems.is_empty() {
        fail(&format!(
            "the embedded weights differ from weights.pin:\n  - {}\n(re-pin with `kiln plan pin --weights {} PLAN.toml` if the change is intended)",
            problems.join("\n  - "),
            dir.display()
        ));
    }
}

/// For a GPU target: compiles exactly the kernel sources the plan's kernel map selects, for
/// its arch, and returns Rust source for `CODE_OBJECTS` embedding them. The cpu target
/// compiles nothing.
fn code_objects(manifest_dir: &Path, out: &Path, plan: &plan::Plan) -> String {
    let Some(arch) = plan.appliance.arch.as_deref().filter(|_| plan.appliance.target != plan::Target::Cpu) else {
        return "pub const CODE_OBJECTS: &[CodeObject] = &[];\n".into();
    };
    // Sources in use; each exports every symbol the registry names from it, so the backend
    // finds the variant for every format (the f32 oracle KV included) in the code objects.
    let mut sources: Vec<&str> = plan
        .kernels
        .entries
        .iter()
        .map(|e| plan::variant(&e.kernel).expect("validated: every kernel exists").source)
        .collect();
    sources.sort_unstable();
    sources.dedup();
    let sources: Vec<(&str, Vec<&str>)> = sources.into_iter().map(|s| (s, plan::source_symbols(s))).collect();
    let mut entries = String::new();
    let mut errors = Vec::new();
    for (source, symbols) in sources {
        let src = manifest_dir.join("kernels").join(source);
        // Named by what goes into it, so a rebuild for another plan reuses what it can.
        let key = object_key(&manifest_dir.join("kernels"), source, arch, &symbols);
        let object = out.join(format!("{}.{arch}.{key}.co", source.trim_end_matches(".hip")));
        let built = if object.is_file() {
            Ok(())
        } else {
            let tmp = object.with_extension("co.partial");
            kernel_compile::compile(&src, arch, &tmp, &symbols)
                .and_then(|_| std::fs::rename(&tmp, &object).map_err(|e| format!("{}: {e}", object.display())))
        };
        match built {
            Ok(()) => entries.push_str(&format!(
                "    CodeObject {{ source: {source:?}, arch: {arch:?}, symbols: &{symbols:?}, bytes: include_bytes!({:?}) }},\n",
                object.display().to_string()
            )),
            Err(e) => errors.push(e),
        }
    }
    if !errors.is_empty() {
        fail(&format!("appliance.target = {} for {arch}:\n  {}", plan.appliance.target.as_str(), errors.join("\n  ")));
    }
    format!("pub const CODE_OBJECTS: &[CodeObject] = &[\n{entries}];\n")
}

/// A digest of everything a code object depends on: the source, the portability header, the
/// arch, the symbols it must export and the compilers asked for.
fn object_key(kernels: &Path, source: &str, arch: &str, symbols: &[&str]) -> String {
    let mut h = blake3::Hasher::new();
    for file in [source, "compat.h"] {
        h.update(&std::fs::read(kernels.join(file)).unwrap_or_default());
    }
    h.update(arch.as_bytes());
    h.update(symbols.join(",").as_bytes());
    for var in ["HIPCC", "KILN_HIP_CLANG"] {
        h.update(std::env::var(var).unwrap_or_default().as_bytes());
    }
    h.finalize().to_hex()[..16].to_string()
}

/// The `emulated-hip` feature: every kernel compiled against HIP-CPU into one library.
fn emulated_library(manifest_dir: &Path, out: &Path) -> PathBuf {
    let hip_cpu =
        emulated_kernels::hip_cpu_dir(manifest_dir).unwrap_or_else(|e| fail(&format!("--features emulated-hip: {e}")));
    build_helper::rerun_if_changed(&hip_cpu);
    let sources = plan::all_sources();
    emulated_kernels::build(
        &hip_cpu,
        &manifest_dir.join("kernels"),
        &sources,
        &plan::all_symbols(),
        &out.join("emulated"),
    )
    .unwrap_or_else(|e| fail(&format!("--features emulated-hip: {e}")))
}

/// Relative plan paths are taken from the crate root, so `KILN_PLAN=plan/x.toml` works from
/// any directory cargo is started in.
fn resolve(manifest_dir: &Path, requested: &str) -> PathBuf {
    let p = PathBuf::from(requested);
    if p.is_absolute() { p } else { manifest_dir.join(p) }
}

fn write(path: &Path, bytes: &[u8]) {
    if let Err(e) = std::fs::write(path, bytes) {
        fail(&format!("cannot write {}: {e}", path.display()));
    }
}

/// Cargo shows a failing build script's stderr; print the whole list there and stop.
fn fail(message: &str) -> ! {
    eprintln!("error: kiln plan rejected\n{message}");
    std::process::exit(1);
}
