//! Hugging Face model folders: `config.json`, `*.safetensors` (single or sharded with
//! `model.safetensors.index.json`), `tokenizer.json`, `tokenizer_config.json`; and models of
//! the Hugging Face Hub, taken from its cache (shared with the `hf` CLI) or downloaded into it
//! with hf-hub (feature `hub`).
//!
//! Tensor names are mapped to GGUF's (`model.layers.0.self_attn.q_proj.weight` ->
//! `blk.0.attn_q.weight`) so that one [`Weights::from_source`](crate::Weights::from_source)
//! serves both formats. Weights stay in the memory map; F32, F16 and BF16 are computed with
//! as they are.

use std::collections::{BTreeSet, HashMap};
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

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

/// The shard files a `model.safetensors.index.json` names, each once, in order; a name that
/// is not a plain file name (shards live beside the index) is refused.
pub fn shard_names(index: &Path) -> Result<Vec<String>, ModelError> {
    let json = read_json(index)?;
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
    Ok(files.into_iter().collect())
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
            shard_names(&index)?
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

/// How long the first request to the Hub may take when `HF_HUB_ETAG_TIMEOUT` does not say.
pub const HUB_TIMEOUT: Duration = Duration::from_secs(10);

/// Where Hugging Face Hub downloads live, where they come from, and whether the network may
/// be used. The variables are those of the Hugging Face tools, so that kiln and the `hf` CLI
/// share one cache.
#[derive(Clone)]
pub struct HubOptions {
    /// The Hub cache (`$HF_HUB_CACHE`, else `$HF_HOME/hub`, else `~/.cache/huggingface/hub`).
    pub cache: PathBuf,
    /// `HF_HUB_OFFLINE` is set: use the cache only, never the network.
    pub offline: bool,
    /// `$HF_ENDPOINT`: another Hub (a mirror, a local server); `None`: the public Hub, hf-hub's
    /// default.
    pub endpoint: Option<String>,
    /// `$HF_TOKEN`: sent to the Hub for private and gated repos; without it, the token file.
    pub token: Option<String>,
    /// The token file (`$HF_TOKEN_PATH`, else `$HF_HOME/token`, which `hf auth login`
    /// writes), read when a download starts and `token` is not set.
    pub token_file: PathBuf,
    /// The most the first request to the Hub (the repo's file list) may take, connecting
    /// included: `$HF_HUB_ETAG_TIMEOUT` seconds, else [`HUB_TIMEOUT`].
    pub timeout: Duration,
    /// `$HF_HUB_ETAG_TIMEOUT` when it is no positive number of seconds (a download then
    /// refuses to start, naming it, rather than use another limit than the one asked for).
    pub bad_timeout: Option<String>,
    /// Say what is downloaded, with a progress bar per file, on standard error (the bars
    /// only when it is a terminal).
    pub progress: bool,
}

impl std::fmt::Debug for HubOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HubOptions")
            .field("cache", &self.cache)
            .field("offline", &self.offline)
            .field("endpoint", &self.endpoint)
            .field("token", &self.token.as_ref().map(|_| "(set)"))
            .field("token_file", &self.token_file)
            .field("timeout", &self.timeout)
            .field("bad_timeout", &self.bad_timeout)
            .field("progress", &self.progress)
            .finish()
    }
}

impl HubOptions {
    /// The cache `cache`, online, the public Hub, no token, [`HUB_TIMEOUT`], no progress.
    pub fn new(cache: PathBuf) -> Self {
        let token_file = cache
            .parent()
            .map_or_else(|| PathBuf::from("token"), |h| h.join("token"));
        HubOptions {
            cache,
            offline: false,
            endpoint: None,
            token: None,
            token_file,
            timeout: HUB_TIMEOUT,
            bad_timeout: None,
            progress: false,
        }
    }

    /// The options the environment gives, with the Hugging Face tools' conventions; progress
    /// on.
    pub fn from_env() -> Self {
        Self::from_vars(|k| std::env::var_os(k))
    }

    /// [`HubOptions::from_env`] with the variables `var` gives.
    pub fn from_vars(var: impl Fn(&str) -> Option<OsString>) -> Self {
        let var = |k: &str| var(k).filter(|v| !v.is_empty());
        let text = |k: &str| var(k).and_then(|v| v.into_string().ok());
        let home = var("HF_HOME")
            .map(PathBuf::from)
            .or_else(|| var("XDG_CACHE_HOME").map(|c| PathBuf::from(c).join("huggingface")))
            .or_else(|| dirs::home_dir().map(|h| h.join(".cache/huggingface")))
            .unwrap_or_else(|| PathBuf::from(".cache/huggingface"));
        let cache = var("HF_HUB_CACHE")
            .map(PathBuf::from)
            .unwrap_or_else(|| home.join("hub"));
        let offline = text("HF_HUB_OFFLINE").is_some_and(|v| {
            matches!(v.to_ascii_lowercase().as_str(), "1" | "true" | "yes" | "on")
        });
        let endpoint = text("HF_ENDPOINT")
            .map(|e| e.trim().trim_end_matches('/').to_owned())
            .filter(|e| !e.is_empty());
        // HUGGING_FACE_HUB_TOKEN is the older name, still read by the Hugging Face tools.
        let token = ["HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"]
            .into_iter()
            .find_map(&text)
            .map(|t| t.trim().to_owned())
            .filter(|t| !t.is_empty());
        let token_file = var("HF_TOKEN_PATH")
            .map(PathBuf::from)
            .unwrap_or_else(|| home.join("token"));
        let raw_timeout = text("HF_HUB_ETAG_TIMEOUT");
        let parsed = raw_timeout.as_deref().map(|t| {
            t.trim()
                .parse::<f64>()
                .ok()
                .filter(|s| *s > 0.0)
                .and_then(|s| Duration::try_from_secs_f64(s).ok())
        });
        let (timeout, bad_timeout) = match parsed {
            None => (HUB_TIMEOUT, None),
            Some(Some(d)) => (d, None),
            Some(None) => (HUB_TIMEOUT, raw_timeout),
        };
        HubOptions {
            cache,
            offline,
            endpoint,
            token,
            token_file,
            timeout,
            bad_timeout,
            progress: true,
        }
    }

    /// The token to send: `token`, else the token file's content, if any.
    pub fn token(&self) -> Option<String> {
        self.token.clone().or_else(|| {
            std::fs::read_to_string(&self.token_file)
                .ok()
                .map(|t| t.trim().to_owned())
                .filter(|t| !t.is_empty())
        })
    }

    /// The Hub in words, for messages.
    #[cfg(feature = "hub")]
    fn hub_name(&self) -> String {
        match &self.endpoint {
            Some(e) => format!("the Hugging Face Hub at {e}"),
            None => "the Hugging Face Hub".into(),
        }
    }
}

/// A `--model` argument that names the Hub: a repo, a revision, and, for one GGUF file of a
/// repo, the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RepoSpec {
    /// `owner/name`.
    pub repo: String,
    /// A branch, tag or commit (`main` when not given).
    pub revision: String,
    /// The GGUF file, a path inside the repo; `None` for a Transformers model folder.
    pub file: Option<String>,
}

impl RepoSpec {
    /// Reads `owner/name[@revision]` (a Transformers model folder: config.json, safetensors,
    /// tokenizer.json) or `owner/name/FILE.gguf[@revision]` (one GGUF file of the repo, FILE
    /// possibly in a subfolder). `None` for anything else.
    pub fn parse(s: &str) -> Option<RepoSpec> {
        let (path, revision) = s.split_once('@').unwrap_or((s, "main"));
        let revision_ok = !revision.is_empty()
            && revision.len() <= 256
            && revision
                .split('/')
                .all(|p| !p.is_empty() && p != "." && p != "..")
            && revision
                .chars()
                .all(|c| !c.is_control() && !c.is_whitespace() && !matches!(c, '\\' | '@'));
        if !revision_ok {
            return None;
        }
        let ok = |p: &str| {
            !p.is_empty()
                && !p.starts_with('.')
                && p.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        };
        let parts: Vec<&str> = path.split('/').collect();
        if parts.len() < 2 || !parts.iter().all(|p| ok(p)) {
            return None;
        }
        let file = match &parts[2..] {
            [] => None,
            rest => {
                let f = rest.join("/");
                if !f.to_ascii_lowercase().ends_with(".gguf") {
                    return None;
                }
                Some(f)
            }
        };
        Some(RepoSpec {
            repo: format!("{}/{}", parts[0], parts[1]),
            revision: revision.to_owned(),
            file,
        })
    }

    /// The model in the cache, if it is there: the snapshot folder with its `config.json`,
    /// or the GGUF file.
    pub fn cached(&self, cache: &Path) -> Option<PathBuf> {
        match &self.file {
            None => cached_snapshot(cache, &self.repo, &self.revision),
            Some(f) => snapshot_dir(cache, &self.repo, &self.revision)
                .map(|s| s.join(f))
                .filter(|p| p.is_file()),
        }
    }

    /// The `hf download` arguments that fetch it.
    fn hf_args(&self) -> String {
        let mut a = self.repo.clone();
        if let Some(f) = &self.file {
            a = format!("{a} {f}");
        }
        if self.revision != "main" {
            a = format!("{a} --revision {}", self.revision);
        }
        a
    }
}

impl std::fmt::Display for RepoSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.repo)?;
        if let Some(file) = &self.file {
            write!(f, "/{file}")?;
        }
        if self.revision != "main" {
            write!(f, "@{}", self.revision)?;
        }
        Ok(())
    }
}

/// Whether `s` reads as a Hub model: `owner/name[@revision]` or
/// `owner/name/FILE.gguf[@revision]` ([`RepoSpec::parse`]).
pub fn is_repo_id(s: &str) -> bool {
    RepoSpec::parse(s).is_some()
}

/// The snapshot folder of `repo` at `revision` in the Hub cache (`refs/REVISION` names the
/// commit; a revision without a ref is taken as the commit), if it exists.
fn snapshot_dir(cache: &Path, repo: &str, revision: &str) -> Option<PathBuf> {
    let root = cache.join(format!("models--{}", repo.replace('/', "--")));
    let commit = std::fs::read_to_string(root.join("refs").join(revision))
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| revision.to_owned());
    if commit.is_empty() || commit.contains('/') || commit.contains("..") {
        return None;
    }
    let snap = root.join("snapshots").join(commit);
    snap.is_dir().then_some(snap)
}

/// The snapshot folder of `repo` at `revision` in the Hub cache, if it is there whole
/// ([`is_whole_download`]).
pub fn cached_snapshot(cache: &Path, repo: &str, revision: &str) -> Option<PathBuf> {
    snapshot_dir(cache, repo, revision).filter(|s| is_whole_download(s))
}

/// Whether a snapshot folder holds everything a download of a model folder fetches:
/// `config.json`, `tokenizer.json` and the weights (the single file, or the index and every
/// shard it names). A download cut short leaves some of them out (each file appears in the
/// snapshot only once it is whole); such a folder is downloaded again, not loaded.
pub fn is_whole_download(snap: &Path) -> bool {
    missing_parts(snap).is_empty()
}

/// What a snapshot folder lacks of a whole download ([`is_whole_download`]), in words.
fn missing_parts(snap: &Path) -> Vec<String> {
    let has = |f: &str| snap.join(f).is_file();
    let mut missing: Vec<String> = ["config.json", "tokenizer.json"]
        .into_iter()
        .filter(|f| !has(f))
        .map(str::to_owned)
        .collect();
    if has(INDEX_FILE) {
        match shard_names(&snap.join(INDEX_FILE)) {
            Ok(shards) => missing.extend(shards.into_iter().filter(|f| !has(f))),
            Err(e) => missing.push(format!("a readable {INDEX_FILE} ({e})")),
        }
    } else if !has(SINGLE_FILE) {
        missing.push(format!("{SINGLE_FILE} or {INDEX_FILE}"));
    }
    missing
}

/// Resolves a `--model` argument: an existing file or folder as it is; otherwise a Hub model
/// ([`RepoSpec::parse`]) from the cache, downloaded into it with hf-hub when it is missing
/// and the network may be used.
pub fn resolve(spec: &str, hub: &HubOptions) -> Result<PathBuf, ModelError> {
    let p = Path::new(spec);
    if p.exists() {
        return Ok(p.to_path_buf());
    }
    let Some(want) = RepoSpec::parse(spec) else {
        return Err(ModelError::Config(format!(
            "{spec}: no such file or folder (nor a Hugging Face repo id like Qwen/Qwen2.5-0.5B-Instruct, or OWNER/NAME/FILE.gguf for one GGUF file of a repo)"
        )));
    };
    if let Some(found) = want.cached(&hub.cache) {
        return Ok(found);
    }
    // A GGUF file's spec also reads as a path: a mistyped local file should be told as such,
    // not only as a repo the Hub lacks.
    let not_local = |e: ModelError| match e {
        ModelError::Config(m) if want.file.is_some() => {
            ModelError::Config(format!("{m} (no local file {spec} exists either)"))
        }
        other => other,
    };
    if hub.offline {
        // A snapshot that is there but not whole: say what it lacks (a cut download, or a
        // repo without what kiln reads, such as tokenizer.json or safetensors weights).
        let partial = match &want.file {
            None => snapshot_dir(&hub.cache, &want.repo, &want.revision)
                .map(|snap| (missing_parts(&snap), snap))
                .filter(|(m, _)| !m.is_empty()),
            Some(_) => None,
        };
        if let Some((missing, snap)) = partial {
            return Err(ModelError::Config(format!(
                "{want}: the cached snapshot {} lacks {}, and HF_HUB_OFFLINE is set; complete it where a network exists (hf download {}) or pass a local folder",
                snap.display(),
                missing.join(", "),
                want.hf_args()
            )));
        }
        return Err(not_local(ModelError::Config(format!(
            "{want}: not in the Hugging Face cache {} and HF_HUB_OFFLINE is set; download it where a network exists (hf download {}) or pass a local folder",
            hub.cache.display(),
            want.hf_args()
        ))));
    }
    download(&want, hub).map_err(not_local)
}

/// The files of a model folder that kiln reads besides the weights, downloaded when the repo
/// has them (the first two are required).
const FOLDER_FILES: [&str; 5] = [
    "config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "generation_config.json",
    "chat_template.jinja",
];

/// What to download of `want`, given the repo's files: the GGUF file; or the files of
/// [`FOLDER_FILES`] there are, then the index or the single safetensors file (the shards
/// follow once the index is read). An error says why the repo is no model kiln reads.
pub fn plan_download(want: &RepoSpec, listed: &[&str]) -> Result<Vec<String>, String> {
    let has = |f: &str| listed.contains(&f);
    let ggufs = || {
        let g: Vec<&str> = listed
            .iter()
            .copied()
            .filter(|f| f.to_ascii_lowercase().ends_with(".gguf"))
            .collect();
        if g.is_empty() {
            String::new()
        } else {
            format!(
                "; its GGUF files: {} (name one as {}/FILE.gguf)",
                g.join(", "),
                want.repo
            )
        }
    };
    if let Some(f) = &want.file {
        return if has(f) {
            Ok(vec![f.clone()])
        } else {
            Err(format!("the repo has no file {f}{}", ggufs()))
        };
    }
    if !has("config.json") {
        return Err(format!(
            "the repo has no config.json, so it is no Transformers model folder{}",
            ggufs()
        ));
    }
    if !has("tokenizer.json") {
        let hint = if has("tokenizer.model") {
            " (only tokenizer.model: kiln reads tokenizer.json)"
        } else {
            ""
        };
        return Err(format!("the repo has no tokenizer.json{hint}"));
    }
    let weights = if has(INDEX_FILE) {
        INDEX_FILE
    } else if has(SINGLE_FILE) {
        SINGLE_FILE
    } else {
        return Err(format!(
            "the repo has neither {SINGLE_FILE} nor {INDEX_FILE} (kiln reads safetensors weights only){}",
            ggufs()
        ));
    };
    let mut files: Vec<String> = FOLDER_FILES
        .iter()
        .filter(|f| has(f))
        .map(|f| (*f).to_owned())
        .collect();
    files.push(weights.to_owned());
    Ok(files)
}

#[cfg(not(feature = "hub"))]
fn download(want: &RepoSpec, hub: &HubOptions) -> Result<PathBuf, ModelError> {
    Err(ModelError::Config(format!(
        "{want}: not in the Hugging Face cache {}, and this kiln was built without Hub downloads (cargo feature `hub`); download it with `hf download {}` or pass a local folder",
        hub.cache.display(),
        want.hf_args()
    )))
}

/// Downloads `want` into the Hub cache with hf-hub, in the layout the Hugging Face tools use
/// (`blobs/`, `snapshots/COMMIT/`, `refs/REVISION`), and returns the snapshot folder or the
/// GGUF file. The repo's file list is asked first, within `hub.timeout`: hf-hub 0.5 sets no
/// timeout on its own requests, so this is where an unreachable or silent Hub is found.
#[cfg(feature = "hub")]
fn download(want: &RepoSpec, hub: &HubOptions) -> Result<PathBuf, ModelError> {
    use hf_hub::api::sync::ApiBuilder;
    use hf_hub::api::RepoInfo;
    use hf_hub::{Cache, Repo, RepoType};

    let fail = |what: String| {
        ModelError::Config(format!(
            "{want}: {what}; or pass a local file or folder with --model"
        ))
    };
    let from = hub.hub_name();
    if let Some(t) = &hub.bad_timeout {
        return Err(fail(format!(
            "HF_HUB_ETAG_TIMEOUT is `{t}`, which is no positive number of seconds (the limit for {from}'s first answer); set it to one, or unset it for {} s",
            HUB_TIMEOUT.as_secs()
        )));
    }
    let mut builder = ApiBuilder::from_cache(Cache::new(hub.cache.clone()))
        .with_token(hub.token())
        .with_progress(hub.progress)
        .with_user_agent("kiln", env!("CARGO_PKG_VERSION"));
    if let Some(e) = &hub.endpoint {
        builder = builder.with_endpoint(e.clone());
    }
    let api = builder
        .build()
        .map_err(|e| fail(format!("cannot set up the Hub client: {e}")))?;
    let at =
        |revision: &str| Repo::with_revision(want.repo.clone(), RepoType::Model, revision.into());
    let repo = api.repo(at(&want.revision));
    let body = repo
        .info_request()
        .config()
        .timeout_global(Some(hub.timeout))
        .build()
        .call()
        .and_then(|mut r| r.body_mut().read_to_string())
        .map_err(|e| fail(http_failure(&e, want, &from, hub.timeout)))?;
    let info: RepoInfo = serde_json::from_str(&body).map_err(|e| {
        fail(format!(
            "{from} answered the file list with something else: {e}"
        ))
    })?;
    let sha = info.sha.trim();
    if sha.len() != 40 || !sha.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(fail(format!(
            "{from} gave the commit `{sha}`, which is no commit id"
        )));
    }
    let listed: Vec<&str> = info.siblings.iter().map(|s| s.rfilename.as_str()).collect();
    let files = plan_download(want, &listed).map_err(fail)?;
    let cache_repo = Cache::new(hub.cache.clone()).repo(at(&want.revision));
    let snapshot = cache_repo.pointer_path(sha);
    if hub.progress {
        eprintln!(
            "kiln: downloading {want} (commit {sha}) from {from} into {}",
            hub.cache.display()
        );
    }
    let get = |file: &str| -> Result<PathBuf, ModelError> {
        let path = snapshot.join(file);
        if path.is_file() {
            return Ok(path);
        }
        // hf-hub asserts and unwraps on answers it does not expect; such a panic is this
        // download's error, not the end of the process.
        let got = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| repo.download(file)))
            .map_err(|_| {
                fail(format!(
                    "downloading {file} from {from}: hf-hub failed on the answer"
                ))
            })?
            .map_err(|e| {
                fail(format!(
                    "downloading {file} from {from}: {}",
                    api_failure(&e)
                ))
            })?;
        if got != path {
            return Err(fail(format!(
                "the repo moved on {from} while downloading (from commit {sha}); run again"
            )));
        }
        Ok(path)
    };
    for f in &files {
        get(f)?;
    }
    if files.iter().any(|f| f == INDEX_FILE) {
        for shard in shard_names(&snapshot.join(INDEX_FILE))? {
            if !listed.contains(&shard.as_str()) {
                return Err(fail(format!(
                    "{INDEX_FILE} names the shard {shard}, which the repo does not have"
                )));
            }
            get(&shard)?;
        }
    }
    // A branch or tag points at the commit, as the Hugging Face tools record it (hf-hub has
    // done so if it downloaded anything; not when every file was already there).
    if want.revision != sha {
        cache_repo.create_ref(sha).map_err(|e| {
            fail(format!(
                "cannot record the revision in {}: {e}",
                hub.cache.display()
            ))
        })?;
    }
    match &want.file {
        Some(f) => Ok(snapshot.join(f)),
        None => Ok(snapshot),
    }
}

/// Why the repo's file list could not be had.
#[cfg(feature = "hub")]
fn http_failure(e: &ureq::Error, want: &RepoSpec, from: &str, timeout: Duration) -> String {
    match e {
        ureq::Error::StatusCode(401 | 403) => format!(
            "{from} refused the file list ({}): a private or gated repo needs a token with access to it (HF_TOKEN, or the token file `hf auth login` writes)",
            status(e)
        ),
        ureq::Error::StatusCode(404) => format!(
            "{from} has no repo {} at revision `{}` (a private repo also answers 404 without a token: set HF_TOKEN)",
            want.repo, want.revision
        ),
        ureq::Error::Timeout(_) => format!(
            "{from} did not answer within {:.0?} (HF_HUB_ETAG_TIMEOUT sets the limit, in seconds)",
            timeout
        ),
        _ => format!("cannot get the file list from {from}: {e}"),
    }
}

/// The HTTP status of an error, in words.
#[cfg(feature = "hub")]
fn status(e: &ureq::Error) -> String {
    match e {
        ureq::Error::StatusCode(c) => format!("HTTP {c}"),
        other => other.to_string(),
    }
}

/// Why hf-hub could not download a file.
#[cfg(feature = "hub")]
fn api_failure(e: &hf_hub::api::sync::ApiError) -> String {
    use hf_hub::api::sync::ApiError;
    match e {
        ApiError::RequestError(r) => match r.as_ref() {
            ureq::Error::StatusCode(401 | 403) => format!(
                "{}: a gated repo needs a token with access to it (accept its terms on the Hub; HF_TOKEN, or the token file `hf auth login` writes)",
                status(r)
            ),
            other => status(other),
        },
        other => other.to_string(),
    }
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
        let spec = |s: &str| RepoSpec::parse(s);
        assert_eq!(
            spec("acme/tiny@refs/pr/1"),
            Some(RepoSpec {
                repo: "acme/tiny".into(),
                revision: "refs/pr/1".into(),
                file: None
            })
        );
        assert_eq!(
            spec("acme/tiny-GGUF/q4/tiny.Q4_K_M.gguf@v1.0"),
            Some(RepoSpec {
                repo: "acme/tiny-GGUF".into(),
                revision: "v1.0".into(),
                file: Some("q4/tiny.Q4_K_M.gguf".into())
            })
        );
        assert_eq!(spec("acme/tiny").unwrap().revision, "main");
        // Malformed: an empty or climbing revision, a file that is no GGUF, a path that
        // climbs or hides, odd characters.
        for bad in [
            "acme/tiny@",
            "acme/tiny@..",
            "acme/tiny@a/../b",
            "acme/tiny@/abs",
            "acme/tiny@a b",
            "acme/tiny@a@b",
            "acme/tiny/config.json",
            "acme/tiny/../x.gguf",
            "acme/tiny/.x.gguf",
            "acme//x.gguf",
            "acme/ti ny",
            "acme",
            "/acme/tiny",
            "",
        ] {
            assert_eq!(spec(bad), None, "{bad:?}");
        }
        assert_eq!(
            spec("acme/tiny/x.gguf@dev").unwrap().to_string(),
            "acme/tiny/x.gguf@dev"
        );
    }

    /// A Hub cache with `repo` at `commit` holding `files`, and the refs given.
    fn fake_cache(
        cache: &Path,
        repo: &str,
        commit: &str,
        files: &[&str],
        refs: &[&str],
    ) -> PathBuf {
        let root = cache.join(format!("models--{}", repo.replace('/', "--")));
        let snap = root.join("snapshots").join(commit);
        for f in files {
            let path = snap.join(f);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, "{}").unwrap();
        }
        for r in refs {
            let path = root.join("refs").join(r);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, format!("{commit}\n")).unwrap();
        }
        snap
    }

    #[test]
    fn hub_cache_lookup_and_offline_error() {
        let tmp = std::env::temp_dir().join(format!("kiln-hub-{}", std::process::id()));
        let whole = ["config.json", "tokenizer.json", "model.safetensors"];
        let snap = fake_cache(&tmp, "acme/tiny", "abc123", &whole, &["main"]);
        let hub = HubOptions {
            offline: true,
            ..HubOptions::new(tmp.clone())
        };
        assert_eq!(resolve("acme/tiny", &hub).unwrap(), snap);
        let e = resolve("acme/other", &hub).unwrap_err().to_string();
        assert!(e.contains("HF_HUB_OFFLINE"), "{e}");
        let e = resolve("no-such-file.gguf", &hub).unwrap_err().to_string();
        assert!(e.contains("no such file"), "{e}");
        // A branch whose name has a slash, a commit named directly, a GGUF file in a
        // subfolder.
        let pr = fake_cache(&tmp, "acme/tiny", "def456", &whole, &["refs/pr/1"]);
        assert_eq!(resolve("acme/tiny@refs/pr/1", &hub).unwrap(), pr);
        assert_eq!(resolve("acme/tiny@def456", &hub).unwrap(), pr);
        let g = fake_cache(&tmp, "acme/tiny-GGUF", "0a1b", &["q4/t.gguf"], &["main"]);
        assert_eq!(
            resolve("acme/tiny-GGUF/q4/t.gguf", &hub).unwrap(),
            g.join("q4/t.gguf")
        );
        // Offline, what the cache lacks is an error that says how to get it.
        let e = resolve("acme/tiny-GGUF/q8/t.gguf", &hub)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("HF_HUB_OFFLINE") && e.contains("hf download acme/tiny-GGUF q8/t.gguf"),
            "{e}"
        );
        let e = resolve("acme/tiny@v2", &hub).unwrap_err().to_string();
        assert!(
            e.contains("acme/tiny@v2") && e.contains("--revision v2"),
            "{e}"
        );
        // A snapshot without config.json is no model folder.
        fake_cache(&tmp, "acme/empty", "e0", &["README.md"], &["main"]);
        assert!(resolve("acme/empty", &hub).is_err());
        // What a download cut short leaves is not taken for the model: config.json alone, or
        // an index whose second shard never came. Offline, it is missing from the cache.
        fake_cache(&tmp, "acme/cut", "c0", &["config.json"], &["main"]);
        let e = resolve("acme/cut", &hub).unwrap_err().to_string();
        assert!(
            e.contains("HF_HUB_OFFLINE")
                && e.contains(
                    "lacks tokenizer.json, model.safetensors or model.safetensors.index.json"
                ),
            "{e}"
        );
        let sharded = fake_cache(
            &tmp,
            "acme/shards",
            "d0",
            &["config.json", "tokenizer.json", "a.safetensors"],
            &["main"],
        );
        let index = r#"{"weight_map": {"x": "a.safetensors", "y": "b.safetensors"}}"#;
        std::fs::write(sharded.join(INDEX_FILE), index).unwrap();
        let e = resolve("acme/shards", &hub).unwrap_err().to_string();
        assert!(e.contains("lacks b.safetensors"), "{e}");
        std::fs::write(sharded.join("b.safetensors"), "{}").unwrap();
        assert_eq!(resolve("acme/shards", &hub).unwrap(), sharded);
        // A mistyped local path that also reads as a repo is told as both.
        let e = resolve("models/smol/x.gguf", &hub).unwrap_err().to_string();
        assert!(
            e.contains("no local file models/smol/x.gguf exists either"),
            "{e}"
        );
        // A malformed id is never looked up.
        let e = resolve("acme/tiny@../x", &hub).unwrap_err().to_string();
        assert!(e.contains("no such file or folder"), "{e}");
        std::fs::remove_dir_all(&tmp).unwrap();
    }

    #[cfg(not(feature = "hub"))]
    #[test]
    fn without_the_hub_feature_the_cache_is_all() {
        let hub = HubOptions::new(std::env::temp_dir().join("kiln-no-hub"));
        let e = resolve("acme/none", &hub).unwrap_err().to_string();
        assert!(
            e.contains("without Hub downloads") && e.contains("hf download acme/none"),
            "{e}"
        );
    }

    #[test]
    fn options_follow_the_hugging_face_variables() {
        let vars = |pairs: &[(&str, &str)]| {
            let pairs: Vec<(String, OsString)> = pairs
                .iter()
                .map(|(k, v)| (k.to_string(), OsString::from(v)))
                .collect();
            HubOptions::from_vars(move |k| {
                pairs.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone())
            })
        };
        let o = vars(&[("HF_HOME", "/h")]);
        assert_eq!(o.cache, PathBuf::from("/h/hub"));
        assert_eq!(o.token_file, PathBuf::from("/h/token"));
        assert!(!o.offline && o.endpoint.is_none() && o.token.is_none());
        assert_eq!(o.timeout, HUB_TIMEOUT);
        let o = vars(&[
            ("HF_HOME", "/h"),
            ("HF_HUB_CACHE", "/c"),
            ("HF_HUB_OFFLINE", "1"),
            ("HF_ENDPOINT", "http://mirror.local:8080/"),
            ("HF_TOKEN", " hf_x \n"),
            ("HUGGING_FACE_HUB_TOKEN", "hf_old"),
            ("HF_TOKEN_PATH", "/t"),
            ("HF_HUB_ETAG_TIMEOUT", "2.5"),
        ]);
        assert_eq!(o.cache, PathBuf::from("/c"));
        assert!(o.offline);
        assert_eq!(o.endpoint.as_deref(), Some("http://mirror.local:8080"));
        assert_eq!(o.token.as_deref(), Some("hf_x"));
        assert_eq!(o.token_file, PathBuf::from("/t"));
        assert_eq!(o.timeout, Duration::from_millis(2500));
        assert!(
            !format!("{o:?}").contains("hf_x"),
            "the token stays out of logs"
        );
        let o = vars(&[("XDG_CACHE_HOME", "/x"), ("HF_HUB_ETAG_TIMEOUT", "1e300")]);
        assert_eq!(o.cache, PathBuf::from("/x/huggingface/hub"));
        assert_eq!(o.timeout, HUB_TIMEOUT);
        assert_eq!(
            o.bad_timeout.as_deref(),
            Some("1e300"),
            "an absurd timeout is kept"
        );
        for bad in ["ten", "0", "-3"] {
            assert_eq!(
                vars(&[("HF_HUB_ETAG_TIMEOUT", bad)]).bad_timeout.as_deref(),
                Some(bad)
            );
        }
        assert_eq!(
            vars(&[("HUGGING_FACE_HUB_TOKEN", "hf_old")])
                .token
                .as_deref(),
            Some("hf_old")
        );
        for off in ["true", "YES", "on"] {
            assert!(vars(&[("HF_HUB_OFFLINE", off)]).offline);
        }
        assert!(!vars(&[("HF_HUB_OFFLINE", "0")]).offline);
        // The token file is read when no variable gives one.
        let tmp = std::env::temp_dir().join(format!("kiln-token-{}", std::process::id()));
        std::fs::create_dir_all(&tmp).unwrap();
        std::fs::write(tmp.join("token"), "hf_file\n").unwrap();
        let h = tmp.to_str().unwrap();
        assert_eq!(vars(&[("HF_HOME", h)]).token().as_deref(), Some("hf_file"));
        assert_eq!(
            vars(&[("HF_HOME", h), ("HF_TOKEN", "hf_env")])
                .token()
                .as_deref(),
            Some("hf_env")
        );
        std::fs::remove_dir_all(&tmp).unwrap();
    }

    #[test]
    fn what_a_download_takes_from_a_repo() {
        let folder = RepoSpec::parse("acme/tiny").unwrap();
        let plan = |want: &RepoSpec, files: &[&str]| plan_download(want, files);
        assert_eq!(
            plan(
                &folder,
                &[
                    ".gitattributes",
                    "README.md",
                    "config.json",
                    "model.safetensors",
                    "pytorch_model.bin",
                    "tokenizer.json",
                    "generation_config.json",
                    "onnx/model.onnx",
                ]
            )
            .unwrap(),
            [
                "config.json",
                "tokenizer.json",
                "generation_config.json",
                "model.safetensors"
            ]
        );
        let sharded = plan(
            &folder,
            &[
                "config.json",
                "tokenizer.json",
                "tokenizer_config.json",
                "chat_template.jinja",
                "model.safetensors.index.json",
                "model-00001-of-00002.safetensors",
                "model.safetensors",
            ],
        )
        .unwrap();
        assert_eq!(sharded.last().unwrap(), INDEX_FILE, "the index wins");
        assert!(sharded.contains(&"chat_template.jinja".to_owned()));
        let e = plan(&folder, &["README.md", "tiny.Q4_0.gguf"]).unwrap_err();
        assert!(
            e.contains("no config.json") && e.contains("tiny.Q4_0.gguf"),
            "{e}"
        );
        let e = plan(
            &folder,
            &["config.json", "tokenizer.model", "model.safetensors"],
        )
        .unwrap_err();
        assert!(e.contains("tokenizer.json"), "{e}");
        let e = plan(
            &folder,
            &["config.json", "tokenizer.json", "pytorch_model.bin"],
        )
        .unwrap_err();
        assert!(e.contains("safetensors"), "{e}");
        let gguf = RepoSpec::parse("acme/tiny/tiny.Q4_0.gguf").unwrap();
        assert_eq!(
            plan(&gguf, &["tiny.Q4_0.gguf", "tiny.Q8_0.gguf"]).unwrap(),
            ["tiny.Q4_0.gguf"]
        );
        let e = plan(&gguf, &["tiny.Q8_0.gguf"]).unwrap_err();
        assert!(e.contains("tiny.Q8_0.gguf"), "{e}");
    }
}
