//! `kiln plan kernels PLAN.toml`: rewrites a GPU plan's kernel map with the default choice for
//! every op the plan runs (the registry variant of the smallest reach that covers each token
//! bucket), in place. After a model, layout or kernel change this is the starting map; tuning
//! replaces rows with measured choices.

use std::path::Path;
use std::process::ExitCode;

use crate::error::{Error, Result};
use crate::plan::{self, KernelEntry};

/// `text` with its `[[kernels.entries]]` replaced by `entries`; comments and layout elsewhere
/// are kept.
pub fn write_entries_into(text: &str, entries: &[KernelEntry]) -> std::result::Result<String, String> {
    let mut doc: toml_edit::DocumentMut = text.parse().map_err(|e| format!("plan is not valid TOML: {e}"))?;
    // The comment above the first row explains the map; it stays above the new first row.
    let note = doc
        .get("kernels")
        .and_then(|k| k.get("entries"))
        .and_then(toml_edit::Item::as_array_of_tables)
        .and_then(|rows| rows.get(0))
        .and_then(|first| first.decor().prefix())
        .and_then(|p| p.as_str())
        .map(str::to_string);
    let mut rows = toml_edit::ArrayOfTables::new();
    for e in entries {
        let mut row = toml_edit::Table::new();
        row["op"] = toml_edit::value(e.op.as_str());
        row["shape"] = toml_edit::value(e.shape.as_str());
        row["buckets"] = toml_edit::value(e.buckets.iter().map(|&b| b as i64).collect::<toml_edit::Array>());
        row["kernel"] = toml_edit::value(e.kernel.as_str());
        if rows.is_empty()
            && let Some(n) = &note
        {
            row.decor_mut().set_prefix(n.as_str());
        }
        rows.push(row);
    }
    let kernels = doc.entry("kernels").or_insert(toml_edit::Item::Table(toml_edit::Table::new()));
    let kernels = kernels.as_table_mut().ok_or_else(|| "`kernels` is not a table".to_string())?;
    kernels.insert("entries", toml_edit::Item::ArrayOfTables(rows));
    Ok(doc.to_string())
}

pub fn default_kernel_map(file: &Path) -> Result<ExitCode> {
    let text = std::fs::read_to_string(file).map_err(|e| Error::io(file, e))?;
    // The map may be stale: parse the structure, then check the plan with its new map.
    let parsed = plan::parse(&text).map_err(Error::Plan)?;
    if parsed.appliance.target == plan::Target::Cpu {
        return Err(Error::Usage(format!("{}: appliance.target = cpu has no kernel map", file.display())));
    }
    let entries = plan::default_entries(&parsed);
    let written = write_entries_into(&text, &entries).map_err(|m| Error::Config { path: file.into(), message: m })?;
    plan::check(&written).map_err(Error::Plan)?;
    let tmp = file.with_extension("toml.kernels");
    std::fs::write(&tmp, &written).map_err(|e| Error::io(&tmp, e))?;
    std::fs::rename(&tmp, file).map_err(|e| Error::io(file, e))?;
    let ops = plan::required_ops(&parsed).len();
    println!("wrote {} kernel map rows for {ops} ops into {}", entries.len(), file.display());
    Ok(ExitCode::SUCCESS)
}
