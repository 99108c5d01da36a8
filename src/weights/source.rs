//! Where a model comes from: a directory to mmap, or files built into the binary.

use std::io::Read;
use std::path::{Path, PathBuf};

use super::Checkpoint;
use super::checkpoint::INDEX_FILE;
use crate::error::{Error, Result};
use crate::tokenizer::TokenizerFiles;

#[derive(Debug, Clone)]
pub enum WeightsSource {
    Dir(PathBuf),
    /// (file name, bytes) pairs of a model directory, as build.rs embedded them.
    Embedded {
        name: String,
        files: &'static [(&'static str, &'static [u8])],
    },
}

impl WeightsSource {
    /// `--weights DIR` if given, else the embedded model if the binary has one, else the
    /// plan's weights.path.
    pub fn choose(
        cli: Option<PathBuf>,
        plan_path: &str,
        embedded: Option<&'static [(&'static str, &'static [u8])]>,
    ) -> WeightsSource {
        match (cli, embedded) {
            (Some(dir), _) => WeightsSource::Dir(dir),
            (None, Some(files)) => WeightsSource::Embedded { name: format!("{plan_path} (embedded)"), files },
            (None, None) => WeightsSource::Dir(PathBuf::from(plan_path)),
        }
    }

    pub fn describe(&self) -> String {
        match self {
            WeightsSource::Dir(d) => d.display().to_string(),
            WeightsSource::Embedded { name, .. } => name.clone(),
        }
    }

    fn file(&self, name: &str) -> Option<&'static [u8]> {
        match self {
            WeightsSource::Dir(_) => None,
            WeightsSource::Embedded { files, .. } => files.iter().find(|(n, _)| *n == name).map(|(_, b)| *b),
        }
    }

    pub fn checkpoint(&self) -> Result<Checkpoint> {
        match self {
            WeightsSource::Dir(d) => Checkpoint::open(d),
            WeightsSource::Embedded { name, files } => {
                let shards: Vec<(&str, &'static [u8])> =
                    files.iter().filter(|(n, _)| n.ends_with(".safetensors")).copied().collect();
                let mut ckpt = Checkpoint::from_static(Path::new(name), &shards)?;
                ckpt.config_json = self.config_json();
                Ok(ckpt)
            }
        }
    }

    pub fn tokenizer_files(&self) -> Result<TokenizerFiles> {
        match self {
            WeightsSource::Dir(d) => TokenizerFiles::read_dir(d),
            WeightsSource::Embedded { .. } => {
                let text = |n: &str| self.file(n).map(|b| String::from_utf8_lossy(b).into_owned());
                Ok(TokenizerFiles {
                    tokenizer_json: self
                        .file("tokenizer.json")
                        .ok_or_else(|| Error::Usage("the embedded model has no tokenizer.json".into()))?
                        .to_vec(),
                    tokenizer_config: text("tokenizer_config.json"),
                    generation_config: text("generation_config.json"),
                    config: text("config.json"),
                    chat_template_jinja: text("chat_template.jinja"),
                })
            }
        }
    }

    /// Every file serving reads: the checkpoint's shards, the shard index, config.json and
    /// the tokenizer files that are present. Shards first, each group in name order.
    pub fn files_read(&self, ckpt: &Checkpoint) -> Vec<String> {
        let mut names = ckpt.shard_names();
        names.sort();
        let others = [INDEX_FILE, "config.json"].into_iter().chain(crate::tokenizer::TOKENIZER_FILES.iter().copied());
        for name in others {
            if !names.iter().any(|n| n == name) && self.file_size(name).ok().flatten().is_some() {
                names.push(name.to_string());
            }
        }
        names
    }

    /// The size of a file of the model, or `None` when there is no such file.
    pub fn file_size(&self, name: &str) -> Result<Option<u64>> {
        match self {
            WeightsSource::Dir(d) => {
                let path = d.join(name);
                match std::fs::metadata(&path) {
                    Ok(m) if m.is_file() => Ok(Some(m.len())),
                    Ok(_) => Ok(None),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                    Err(e) => Err(Error::io(path, e)),
                }
            }
            WeightsSource::Embedded { .. } => Ok(self.file(name).map(|b| b.len() as u64)),
        }
    }

    /// A file of the model to read from the start.
    pub fn open(&self, name: &str) -> Result<Box<dyn Read + Send>> {
        match self {
            WeightsSource::Dir(d) => {
                let path = d.join(name);
                Ok(Box::new(std::fs::File::open(&path).map_err(|e| Error::io(path, e))?))
            }
            WeightsSource::Embedded { .. } => match self.file(name) {
                Some(bytes) => Ok(Box::new(bytes)),
                None => Err(Error::Usage(format!("the embedded model has no {name}"))),
            },
        }
    }

    /// config.json's text, which verification compares with the plan.
    pub fn config_json(&self) -> Option<String> {
        match self {
            WeightsSource::Dir(d) => std::fs::read_to_string(d.join("config.json")).ok(),
            WeightsSource::Embedded { .. } => self.file("config.json").map(|b| String::from_utf8_lossy(b).into_owned()),
        }
    }
}
