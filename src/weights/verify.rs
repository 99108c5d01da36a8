//! Checks a checkpoint against the plan before any compute: every tensor the model needs,
//! with the dtype, shape and format the plan's quant rules say; nothing unexpected; the
//! config.json shapes equal to the plan's. Every problem is reported, each naming its tensor.

use std::collections::BTreeSet;

use safetensors::Dtype;

use super::glm::{TensorTable, scale_name, weight_name};
use super::{Checkpoint, StoredAs, parse_hf_config};
use crate::plan::{Plan, Problem, WeightFormat};

struct Checker<'a> {
    ckpt: &'a Checkpoint,
    used: BTreeSet<String>,
    problems: Vec<Problem>,
}

impl Checker<'_> {
    fn problem(&mut self, tensor: &str, message: String) {
        // The tensor (or `config.json` key) at fault.
        self.problems.push(Problem::new(tensor, message));
    }

    /// `name` must be `dtype` with `shape`.
    fn expect(&mut self, name: &str, dtypes: &[Dtype], shape: &[u64], why: &str) {
        self.used.insert(name.to_string());
        let Some(t) = self.ckpt.get(name) else {
            self.problem(name, format!("missing tensor {name}: expected {} {shape:?} ({why})", dtype_list(dtypes)));
            return;
        };
        let got: Vec<u64> = t.shape.iter().map(|&d| d as u64).collect();
        if !dtypes.contains(&t.dtype) || got != shape {
            self.problem(
                name,
                format!("{name} is {:?} {got:?} but {why} expects {} {shape:?}", t.dtype, dtype_list(dtypes)),
            );
        }
    }
}

fn dtype_list(d: &[Dtype]) -> String {
    d.iter().map(|x| format!("{x:?}")).collect::<Vec<_>>().join(" or ")
}

fn dense_dtype(f: WeightFormat) -> Dtype {
    match f {
        WeightFormat::F32 => Dtype::F32,
        _ => Dtype::BF16,
    }
}

pub fn verify(plan: &Plan, ckpt: &Checkpoint) -> Vec<Problem> {
    let mut c = Checker { ckpt, used: BTreeSet::new(), problems: Vec::new() };
    // A config that describes another model explains every tensor problem after it.
    config_matches(plan, ckpt, &mut c);
    let quant = &plan.weights.quant;
    let table = TensorTable::new(&plan.model);

    for l in &table.linears() {
        let key = l.class.plan_key(l.mtp);
        let want = quant.format(l.class, l.mtp).unwrap_or(WeightFormat::Bf16);
        let (w, s) = (weight_name(&l.module), scale_name(&l.module));
        let rule = format!("{key} = {}", want.as_str());
        match (want, ckpt.linear_format(&l.module)) {
            (WeightFormat::Mxfp4, Some(StoredAs::Format(WeightFormat::Mxfp4))) => {
                let group = l.cols.div_ceil(32);
                c.expect(&w, &[Dtype::U8], &[l.rows, l.cols.div_ceil(2)], &rule);
                c.expect(&s, &[Dtype::U8], &[l.rows, group], &rule);
            }
            (WeightFormat::Mxfp4, Some(_)) => {
                c.used.insert(w.clone());
                let t = &ckpt.get(&w).expect("linear_format saw it");
                c.problem(
                    &w,
                    format!(
                        "{w} is {:?} {:?} but {rule} expects MXFP4: U8 [{}, {}] with {s} U8 [{}, {}]",
                        t.dtype,
                        t.shape,
                        l.rows,
                        l.cols.div_ceil(2),
                        l.rows,
                        l.cols.div_ceil(32)
                    ),
                );
            }
            (_, Some(StoredAs::Format(WeightFormat::Mxfp4))) => {
                c.used.insert(w.clone());
                c.used.insert(s.clone());
                c.problem(
                    &w,
                    format!(
                        "{w} is MXFP4 (U8 + {s}) but {rule} expects {:?} [{}, {}]",
                        dense_dtype(want),
                        l.rows,
                        l.cols
                    ),
                );
            }
            (dense, _) => c.expect(&w, &[dense_dtype(dense)], &[l.rows, l.cols], &rule),
        }
    }
    for v in &table.vectors() {
        let dtypes: &[Dtype] = if v.f32_only { &[Dtype::F32] } else { &[Dtype::BF16, Dtype::F32, Dtype::F16] };
        c.expect(&v.name, dtypes, &[v.len], "the plan's model shape");
    }
    let unexpected: Vec<(String, Dtype, Vec<usize>)> = ckpt
        .tensors()
        .filter(|(n, _)| !c.used.contains(*n))
        .map(|(n, t)| (n.to_string(), t.dtype, t.shape.clone()))
        .collect();
    for (name, dtype, shape) in unexpected {
        c.problem(
            &name,
            format!("unexpected tensor {name} ({dtype:?} {shape:?}): the plan's model has no such tensor"),
        );
    }
    c.problems
}

/// config.json, when the directory has one, must describe the plan's model.
fn config_matches(plan: &Plan, ckpt: &Checkpoint, c: &mut Checker<'_>) {
    let Some(text) = &ckpt.config_json else { return };
    let cfg = match parse_hf_config(text, &ckpt.dir.join("config.json")) {
        Ok(cfg) => cfg,
        Err(e) => return c.problem("config.json", format!("config.json: {e}")),
    };
    let (Ok(toml::Value::Table(ours)), Ok(toml::Value::Table(theirs))) =
        (toml::Value::try_from(&plan.model), toml::Value::try_from(&cfg.model))
    else {
        return;
    };
    // The MTP layer count may be lowered by the plan (a checkpoint without MTP tensors), and
    // the IndexShare schedule is compared as a whole below.
    for (key, want) in &ours {
        if matches!(key.as_str(), "num_nextn_predict_layers" | "indexer_types") {
            continue;
        }
        if let Some(got) = theirs.get(key)
            && got != want
        {
            c.problem("config.json", format!("config.json {key} = {got} but the plan has model.{key} = {want}"));
        }
    }
    let (a, b) = (plan.model.indexer_pattern(), cfg.model.indexer_pattern());
    if a != b {
        c.problem("config.json", format!("config.json IndexShare schedule {b} but the plan's is {a}"));
    }
}
