//! Hugging Face model folders: `config.json`, `*.safetensors` (single or sharded with
//! `model.safetensors.index.json`), `tokenizer.json`, `tokenizer_config.json`, and the Hub
//! cache that `hf download` fills.
//!
//! Tensor names are mapped to GGUF's (`model.layers.0.self_attn.q_proj.weight` ->
//! `blk.0.attn_q.weight`) so that one [`Weights::from_source`](crate::Weights::from_source)
//! serves both formats. Weights stay in the memory map; F32, F16 and BF16 are computed with
//! as they are.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use serde_json::Value;

use crate::backend::{RawTensor, TensorBytes};
use crate::weights::TensorSource;
use crate::{ModelConfig, ModelError};
use kiln_formats::safetensors::SafeTensors;
use kiln_tokenizer::Tokenizer;

/// The sharded checkpoint's index file.
pub const INDEX_FILE: &str = "model.safetensors.index.json";
/// The single-file checkpoint.
pub const SINGLE_FILE: &str = "model.safetensors";

/// Whether `path` is a folder that looks like a Hugging Face model (has `config.json`).
pub fn is_model_folder(path: &Path) -> bool {
    path.is_dir() && path.join("config.json").is_file()
}

/// Reads a JSON file, naming it in errors.
pub fn read_json(path: &Path) -> Result<Value, ModelError> {
    let text = std::fs::read_to_string(path).map_err(|source| ModelError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    serde_json::from_str(&text)
        .map_err(|e| ModelError::Config(format!("{}: not valid JSON: {e}", path.display())))
}

/// Reads `config.json` of a model folder: the raw JSON and the decoder's shape.
pub fn read_config(dir: &Path) -> Result<(Value, ModelConfig), ModelError> {
    let path = dir.join("config.json");
    if !path.is_file() {
        return Err(ModelError::Config(format!(
            "{}: no config.json; a Hugging Face model folder needs config.json, *.safetensors and tokenizer.json",
            dir.display()
        )));
    }
    let json = read_json(&path)?;
    let cfg = ModelConfig::from_hf_json(&path.display().to_string(), &json)?;
    Ok((json, cfg))
}

/// The GGUF name of a Hugging Face tensor, for the tensors the decoder uses; `None` for
/// others (rotary caches, unknown extras).
pub fn gguf_name(hf: &str) -> Option<String> {
    let top = match hf {
        "model.embed_tokens.weight" => Some("token_embd.weight"),
        "model.norm.weight" => Some("output_norm.weight"),
        "lm_head.weight" => Some("output.weight"),
        _ => None,
    };
    if let Some(t) = top {
        return Some(t.to_owned());
    }
    let rest = hf.strip_prefix("model.layers.")?;
    let (layer, rest) = rest.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    let (module, kind) = rest.rsplit_once('.')?;
    let base = match module {
        "input_layernorm" => "attn_norm",
        "post_attention_layernorm" => "ffn_norm",
        "self_attn.q_proj" => "attn_q",
        "self_attn.k_proj" => "attn_k",
        "self_attn.v_proj" => "attn_v",
        "self_attn.qkv_proj" => "attn_qkv",
        "self_attn.o_proj" => "attn_output",
        "mlp.gate_proj" => "ffn_gate",
        "mlp.up_proj" => "ffn_up",
        // Phi-3 stores gate and up as one matrix, gate rows first: GGUF's fused ffn_up.
        "mlp.gate_up_proj" => "ffn_up",
        "mlp.down_proj" => "ffn_down",
        _ => return None,
    };
    if kind != "weight" && kind != "bias" {
        return None;
    }
    Some(format!("blk.{layer}.{base}.{kind}"))
}

/// The safetensors files of a model folder, as a [`TensorSource`] under GGUF names.
pub struct HfTensors {
    dir: PathBuf,
    shards: Vec<Arc<SafeTensors>>,
    /// GGUF name -> (shard, Hugging Face name).
    names: HashMap<String, (usize, String)>,
}

impl std::fmt::Debug for HfTensors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "HfTensors({}, {} shards, {} tensors)",
            self.dir.display(),
            self.shards.len(),
            self.names.len()
        )
    }
}

impl HfTensors {
    /// Opens `model.safetensors`, or every shard that `model.safetensors.index.json` names.
    pub fn open(dir: &Path) -> Result<Self, ModelError> {
        let index = dir.join(INDEX_FILE);
        let files: Vec<String> = if index.is_file() {
            let json = read_json(&index)?;
            let map = json
                .get("weight_map")
                .and_then(Value::as_object)
                .ok_or_else(|| {
                    ModelError::Config(format!("{}: no `weight_map` object", index.display()))
                })?;
            let mut files = BTreeSet::new();
            for (name, file) in map {
                let file = file.as_str().ok_or_else(|| {
                    ModelError::Config(format!(
                        "{}: weight_map[`{name}`] is not a file name",
                        index.display()
                    ))
                })?;
                // Shards live beside the index; a name that climbs out of the folder is refused.
                if file.contains('/') || file.contains('\\') || file == ".." || file.is_empty() {
                    return Err(ModelError::Config(format!(
                        "{}: weight_map[`{name}`] = `{file}` is not a plain file name",
                        index.display()
                    )));
                }
                files.insert(file.to_owned());
            }
            files.into_iter().collect()
        } else if dir.join(SINGLE_FILE).is_file() {
            vec![SINGLE_FILE.to_owned()]
        } else {
            let hint = if dir.join("pytorch_model.bin").exists() {
                " (pytorch_model.bin is there: kiln reads safetensors only; convert it, e.g. with transformers' save_pretrained)"
            } else {
                ""
            };
            return Err(ModelError::Config(format!(
                "{}: neither {SINGLE_FILE} nor {INDEX_FILE} found{hint}",
                dir.display()
            )));
        };
        let mut shards = Vec::with_capacity(files.len());
        let mut names = HashMap::new();
        for (i, file) in files.iter().enumerate() {
            let st = SafeTensors::open(dir.join(file))?;
            for name in st.tensors().keys() {
                if let Some(g) = gguf_name(name) {
                    names.insert(g, (i, name.clone()));
                }
            }
            shards.push(Arc::new(st));
        }
        Ok(HfTensors {
            dir: dir.to_path_buf(),
            shards,
            names,
        })
    }

    /// The GGUF names of the tensors the decoder uses, sorted.
    pub fn names(&self) -> Vec<String> {
        let mut v: Vec<String> = self.names.keys().cloned().collect();
        v.sort();
        v
    }

    fn lookup(&self, name: &str) -> Result<(&Arc<SafeTensors>, &str), ModelError> {
        let (shard, hf) = self.names.get(name).ok_or_else(|| {
            ModelError::Config(format!(
                "{}: no tensor for `{name}` (Hugging Face name `{}`) in the safetensors files",
                self.dir.display(),
                hf_name_hint(name)
            ))
        })?;
        Ok((&self.shards[*shard], hf))
    }
}

/// The Hugging Face name that usually stands for a GGUF name, for error messages.
fn hf_name_hint(gguf: &str) -> String {
    let pairs = [
        ("token_embd.weight", "model.embed_tokens.weight"),
        ("output_norm.weight", "model.norm.weight"),
        ("output.weight", "lm_head.weight"),
    ];
    if let Some((_, h)) = pairs.iter().find(|(g, _)| *g == gguf) {
        return (*h).to_owned();
    }
    let Some(rest) = gguf.strip_prefix("blk.") else {
        return gguf.to_owned();
    };
    let Some((layer, rest)) = rest.split_once('.') else {
        return gguf.to_owned();
    };
    let Some((module, kind)) = rest.rsplit_once('.') else {
        return gguf.to_owned();
    };
    let m = match module {
        "attn_norm" => "input_layernorm",
        "ffn_norm" => "post_attention_layernorm",
        "attn_q" => "self_attn.q_proj",
        "attn_k" => "self_attn.k_proj",
        "attn_v" => "self_attn.v_proj",
        "attn_qkv" => "self_attn.qkv_proj",
        "attn_output" => "self_attn.o_proj",
        "ffn_gate" => "mlp.gate_proj",
        "ffn_up" => "mlp.up_proj",
        "ffn_down" => "mlp.down_proj",
        _ => module,
    };
    format!("model.layers.{layer}.{m}.{kind}")
}

impl TensorSource for HfTensors {
    fn describe(&self) -> String {
        self.dir.display().to_string()
    }

    fn has(&self, name: &str) -> bool {
        self.names.contains_key(name)
    }

    fn matrix(&self, name: &str) -> Result<RawTensor, ModelError> {
        let (st, hf) = self.lookup(name)?;
        let info = st.info(hf)?;
        let [rows, cols] = info.shape[..] else {
            return Err(ModelError::Config(format!(
                "{}: tensor `{hf}` has shape {:?}, expected a matrix",
                st.path().display(),
                info.shape
            )));
        };
        let ty = info.dtype.ggml().ok_or_else(|| {
            ModelError::Unsupported(format!(
                "{}: tensor `{hf}` is {}; kiln computes with F32, F16 and BF16 safetensors (for quantized weights use GGUF or --quantize)",
                st.path().display(),
                info.dtype.name()
            ))
        })?;
        let buf: Arc<dyn AsRef<[u8]> + Send + Sync> = st.clone();
        Ok(RawTensor {
            name: name.to_owned(),
            ty,
            rows,
            cols,
            data: TensorBytes::Shared {
                buf,
                offset: info.start,
                len: info.end - info.start,
            },
        })
    }

    fn vector(&self, name: &str) -> Result<Vec<f32>, ModelError> {
        let (st, hf) = self.lookup(name)?;
        Ok(st.to_f32(hf)?)
    }
}

/// The tokenizer and chat template of a model folder.
pub struct HfTokenizer {
    /// The vocabulary.
    pub tokenizer: Tokenizer,
    /// The chat template (`chat_template.jinja`, else `tokenizer_config.json`'s), if any.
    pub chat_template: Option<String>,
    /// Where it was read: the file, and the field within it.
    pub chat_template_origin: String,
    /// The BOS and EOS texts that templates use.
    pub bos_text: String,
    /// EOS text.
    pub eos_text: String,
}

/// Ids listed under `key` in a config (an integer or a list of integers).
fn ids(v: &Value, key: &str) -> Vec<u32> {
    match v.get(key) {
        Some(Value::Number(n)) => n.as_u64().map(|i| vec![i as u32]).unwrap_or_default(),
        Some(Value::Array(a)) => a
            .iter()
            .filter_map(|x| x.as_u64().map(|i| i as u32))
            .collect(),
        _ => vec![],
    }
}

/// Reads `tokenizer.json`, `tokenizer_config.json` and `generation_config.json` of a folder.
pub fn read_tokenizer(dir: &Path, config: &Value) -> Result<HfTokenizer, ModelError> {
    let f = tokenizer_files(dir, config)?;
    let tc_path = dir.join("tokenizer_config.json");
    let tc = f.config.as_ref();
    let tokenizer = Tokenizer::from_hf_json(&f.path, &f.json, tc, &f.eos)?;
    let jinja = dir.join("chat_template.jinja");
    let chat_template_origin = if jinja.is_file() {
        jinja.display().to_string()
    } else {
        format!("{}: chat_template", tc_path.display())
    };
    let chat_template = if jinja.is_file() {
        Some(
            std::fs::read_to_string(&jinja).map_err(|source| ModelError::Io {
                path: jinja.clone(),
                source,
            })?,
        )
    } else {
        match tc.and_then(|c| c.get("chat_template")) {
            Some(Value::String(s)) => Some(s.clone()),
            // A list of named templates: the default one.
            Some(Value::Array(list)) => list
                .iter()
                .find(|t| t.get("name").and_then(Value::as_str) == Some("default"))
                .and_then(|t| t.get("template"))
                .and_then(Value::as_str)
                .map(str::to_owned),
            _ => None,
        }
    };
    let text = |id: Option<u32>| {
        id.and_then(|i| tokenizer.token_text(i))
            .unwrap_or("")
            .to_owned()
    };
    Ok(HfTokenizer {
        bos_text: text(tokenizer.bos()),
        eos_text: text(tokenizer.eos()),
        tokenizer,
        chat_template,
        chat_template_origin,
    })
}

/// A folder's tokenizer files, read: `tokenizer.json`, `tokenizer_config.json` if there is
/// one, and the ids that end generation in `config.json` and `generation_config.json`.
pub struct TokenizerFiles {
    /// Where `tokenizer.json` is, for errors.
    pub path: String,
    /// `tokenizer.json`.
    pub json: Value,
    /// `tokenizer_config.json`.
    pub config: Option<Value>,
    /// Extra end-of-generation ids.
    pub eos: Vec<u32>,
}

/// Reads the tokenizer files of `dir` (see [`TokenizerFiles`]).
pub fn tokenizer_files(dir: &Path, config: &Value) -> Result<TokenizerFiles, ModelError> {
    let tj = dir.join("tokenizer.json");
    if !tj.is_file() {
        let hint = if dir.join("tokenizer.model").exists() {
            " (only tokenizer.model is there: kiln reads tokenizer.json; save the tokenizer with transformers to get one)"
        } else {
            ""
        };
        return Err(ModelError::Config(format!(
            "{}: no tokenizer.json{hint}",
            dir.display()
        )));
    }
    let tc_path = dir.join("tokenizer_config.json");
    let tc = if tc_path.is_file() {
        Some(read_json(&tc_path)?)
    } else {
        None
    };
    let mut eos = ids(config, "eos_token_id");
    let gc = dir.join("generation_config.json");
    if gc.is_file() {
        eos.extend(ids(&read_json(&gc)?, "eos_token_id"));
    }
    Ok(TokenizerFiles {
        path: tj.display().to_string(),
        json: read_json(&tj)?,
        config: tc,
        eos,
    })
}

/// Where Hugging Face Hub downloads live, and whether the network may be used.
#[derive(Debug, Clone)]
pub struct HubOptions {
    /// The Hub cache (`$HF_HUB_CACHE`, else `$HF_HOME/hub`, else `~/.cache/huggingface/hub`).
    pub cache: PathBuf,
    /// `HF_HUB_OFFLINE` is set: use the cache only.
    pub offline: bool,
}

impl HubOptions {
    /// The options the environment gives, with the Hugging Face tools' conventions.
    pub fn from_env() -> Self {
        let var = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty());
        let cache = var("HF_HUB_CACHE")
            .map(PathBuf::from)
            .or_else(|| var("HF_HOME").map(|h| PathBuf::from(h).join("hub")))
            .or_else(|| {
                var("XDG_CACHE_HOME").map(|c| PathBuf::from(c).join("huggingface").join("hub"))
            })
            .or_else(|| dirs::home_dir().map(|h| h.join(".cache/huggingface/hub")))
            .unwrap_or_else(|| PathBuf::from(".cache/huggingface/hub"));
        let offline = std::env::var("HF_HUB_OFFLINE")
            .map(|v| matches!(v.to_ascii_lowercase().as_str(), "1" | "true" | "yes" | "on"))
            .unwrap_or(false);
        HubOptions { cache, offline }
    }
}

/// Whether `s` reads as a Hub repository id (`owner/name`, optionally `@revision`).
pub fn is_repo_id(s: &str) -> bool {
    let repo = s.split_once('@').map_or(s, |(r, _)| r);
    let mut parts = repo.split('/');
    let (Some(owner), Some(name), None) = (parts.next(), parts.next(), parts.next()) else {
        return false;
    };
    let ok = |p: &str| {
        !p.is_empty()
            && !p.starts_with('.')
            && p.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    };
    ok(owner) && ok(name)
}

/// The snapshot folder of `repo` at `revision` in the Hub cache, if it is there with a
/// `config.json`.
pub fn cached_snapshot(cache: &Path, repo: &str, revision: &str) -> Option<PathBuf> {
    let root = cache.join(format!("models--{}", repo.replace('/', "--")));
    let commit = std::fs::read_to_string(root.join("refs").join(revision))
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| revision.to_owned());
    if commit.is_empty() || commit.contains('/') || commit.contains("..") {
        return None;
    }
    let snap = root.join("snapshots").join(commit);
    is_model_folder(&snap).then_some(snap)
}

/// Resolves a `--model` argument: an existing file or folder as it is; otherwise a Hub repo
/// id (`owner/name[@revision]`) from the cache, downloading it with the Hugging Face CLI
/// (`hf`, or the older `huggingface-cli`) when the cache lacks it and the network may be used.
pub fn resolve(spec: &str, hub: &HubOptions) -> Result<PathBuf, ModelError> {
    let p = Path::new(spec);
    if p.exists() {
        return Ok(p.to_path_buf());
    }
    if !is_repo_id(spec) {
        return Err(ModelError::Config(format!(
            "{spec}: no such file or folder (nor a Hugging Face repo id like Qwen/Qwen2.5-0.5B-Instruct)"
        )));
    }
    let (repo, revision) = spec.split_once('@').unwrap_or((spec, "main"));
    if let Some(s) = cached_snapshot(&hub.cache, repo, revision) {
        return Ok(s);
    }
    if hub.offline {
        return Err(ModelError::Config(format!(
            "{repo}: not in the Hugging Face cache {} and HF_HUB_OFFLINE is set; download it where a network exists (hf download {repo}) or pass a local folder",
            hub.cache.display()
        )));
    }
    download(repo, revision, hub)
}

fn download(repo: &str, revision: &str, hub: &HubOptions) -> Result<PathBuf, ModelError> {
    let mut last_err = String::new();
    for tool in ["hf", "huggingface-cli"] {
        let out = Command::new(tool)
            .args(["download", repo, "--revision", revision, "--include"])
            .args(["*.json", "*.safetensors", "*.jinja"])
            .env("HF_HUB_CACHE", &hub.cache)
            .output();
        match out {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => last_err = format!("{tool}: {e}"),
            Ok(o) if o.status.success() => {
                if let Some(s) = cached_snapshot(&hub.cache, repo, revision) {
                    return Ok(s);
                }
                // The CLI prints the snapshot folder last.
                let stdout = String::from_utf8_lossy(&o.stdout);
                if let Some(path) = stdout.lines().last().map(str::trim) {
                    if is_model_folder(Path::new(path)) {
                        return Ok(PathBuf::from(path));
                    }
                }
                last_err = format!("{tool} finished but no model folder with config.json appeared");
            }
            Ok(o) => {
                last_err = format!(
                    "{tool} failed: {}",
                    String::from_utf8_lossy(&o.stderr).trim()
                );
            }
        }
    }
    if last_err.is_empty() {
        last_err =
            "neither `hf` nor `huggingface-cli` is installed (pip install huggingface_hub)".into();
    }
    Err(ModelError::Config(format!(
        "{repo}: cannot download from the Hugging Face Hub: {last_err}; or pass a local folder with --model"
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_map_both_ways() {
        for (hf, g) in [
            ("model.embed_tokens.weight", "token_embd.weight"),
            ("lm_head.weight", "output.weight"),
            ("model.layers.3.self_attn.q_proj.bias", "blk.3.attn_q.bias"),
            (
                "model.layers.0.self_attn.qkv_proj.weight",
                "blk.0.attn_qkv.weight",
            ),
            (
                "model.layers.11.mlp.down_proj.weight",
                "blk.11.ffn_down.weight",
            ),
            (
                "model.layers.1.post_attention_layernorm.weight",
                "blk.1.ffn_norm.weight",
            ),
        ] {
            assert_eq!(gguf_name(hf).as_deref(), Some(g));
            if !g.contains("qkv") {
                assert_eq!(hf_name_hint(g), hf);
            }
        }
        assert_eq!(
            gguf_name("model.layers.0.self_attn.rotary_emb.inv_freq"),
            None
        );
        assert_eq!(gguf_name("model.layers.x.mlp.up_proj.weight"), None);
    }

    #[test]
    fn repo_ids() {
        assert!(is_repo_id("Qwen/Qwen2.5-0.5B-Instruct"));
        assert!(is_repo_id("TinyLlama/TinyLlama-1.1B-Chat-v1.0@main"));
        assert!(!is_repo_id("model.gguf"));
        assert!(!is_repo_id("../x/y"));
        assert!(!is_repo_id("a/b/c"));
    }

    #[test]
    fn hub_cache_lookup_and_offline_error() {
        let tmp = std::env::temp_dir().join(format!("kiln-hub-{}", std::process::id()));
        let root = tmp.join("models--acme--tiny");
        let snap = root.join("snapshots").join("abc123");
        std::fs::create_dir_all(&snap).unwrap();
        std::fs::create_dir_all(root.join("refs")).unwrap();
        std::fs::write(root.join("refs").join("main"), "abc123\n").unwrap();
        std::fs::write(snap.join("config.json"), "{}").unwrap();
        let hub = HubOptions {
            cache: tmp.clone(),
            offline: true,
        };
        assert_eq!(resolve("acme/tiny", &hub).unwrap(), snap);
        let e = resolve("acme/other", &hub).unwrap_err().to_string();
        assert!(e.contains("HF_HUB_OFFLINE"), "{e}");
        let e = resolve("no-such-file.gguf", &hub).unwrap_err().to_string();
        assert!(e.contains("no such file"), "{e}");
        std::fs::remove_dir_all(&tmp).unwrap();
    }
}
