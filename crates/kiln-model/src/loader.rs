//! Opening a model: config, weights, tokenizer and chat template in one step, from a GGUF
//! file or a Hugging Face folder, with an optional LoRA adapter merged and optional
//! quantization on load.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use kiln_formats::gguf::GgufFile;

use crate::backend::Backend;
use crate::hf::{self, HfTensors};
use crate::lora::{Adapter, LoraSource};
use crate::quantize::{quantize_weights, QuantReport, QuantType};
use crate::weights::{GgufSource, TensorSource};
use crate::{Model, ModelConfig, ModelError, Weights};
use kiln_tokenizer::chat::{ChatTemplate, CHATML};
use kiln_tokenizer::Tokenizer;

/// A model ready to run, with what it needs to talk.
pub struct LoadedModel<B: Backend> {
    /// The decoder on its backend.
    pub model: Model<B>,
    /// The vocabulary.
    pub tokenizer: Tokenizer,
    /// The chat template (the model's own, or ChatML when it has none).
    pub template: ChatTemplate,
    /// A display name.
    pub name: String,
    /// Where it was loaded from (a GGUF file or a model folder).
    pub path: PathBuf,
    /// Seconds spent loading.
    pub load_s: f64,
    /// The GGUF file, kept mapped (`None` for a Hugging Face folder).
    pub file: Option<Arc<GgufFile>>,
    /// Bytes of weights held, after any adapter merge and quantization.
    pub weight_bytes: usize,
    /// What `--quantize` did, if asked.
    pub quantized: Option<QuantReport>,
    /// The adapter merged in, if any.
    pub lora: Option<PathBuf>,
}

/// How to load a model beyond its path.
#[derive(Debug, Clone, Default)]
pub struct LoadOptions {
    /// A PEFT LoRA adapter folder to merge into the weights.
    pub lora: Option<PathBuf>,
    /// Quantize float weights on load.
    pub quantize: Option<QuantType>,
}

/// Loads a GGUF model onto `backend`.
pub fn load_gguf<B: Backend>(path: &Path, backend: B) -> Result<LoadedModel<B>, ModelError> {
    load(path, backend, &LoadOptions::default())
}

/// Loads a GGUF file or a Hugging Face model folder onto `backend`.
pub fn load<B: Backend>(
    path: &Path,
    backend: B,
    opts: &LoadOptions,
) -> Result<LoadedModel<B>, ModelError> {
    let t0 = Instant::now();
    let parts = if path.is_dir() {
        if !hf::is_model_folder(path) {
            return Err(ModelError::Config(format!(
                "{}: a folder, but not a Hugging Face model (no config.json)",
                path.display()
            )));
        }
        open_folder(path)?
    } else {
        open_gguf(path)?
    };
    let adapter = opts.lora.as_deref().map(Adapter::open).transpose()?;
    let mut weights = match &adapter {
        Some(a) => {
            let src = LoraSource::new(parts.source.as_ref(), a, &parts.cfg)?;
            Weights::from_source(&src, &parts.cfg)?
        }
        None => Weights::from_source(parts.source.as_ref(), &parts.cfg)?,
    };
    drop(parts.source);
    let quantized = opts
        .quantize
        .map(|q| quantize_weights(&mut weights, q))
        .transpose()?;
    let weight_bytes = weights.bytes();
    let model = Model::new(backend, parts.cfg, weights)?;
    let template = match parts.template.as_deref() {
        Some(src) => ChatTemplate::with_origin(
            src,
            &parts.bos_text,
            &parts.eos_text,
            &parts.template_origin,
        )?,
        None => ChatTemplate::with_origin(
            CHATML,
            &parts.bos_text,
            &parts.eos_text,
            "kiln's ChatML template (the model has none)",
        )?,
    };
    Ok(LoadedModel {
        model,
        tokenizer: parts.tokenizer,
        template,
        name: parts.name,
        path: path.to_path_buf(),
        load_s: t0.elapsed().as_secs_f64(),
        file: parts.file,
        weight_bytes,
        quantized,
        lora: opts.lora.clone(),
    })
}

/// What each format's reader hands the common part of loading.
struct Parts {
    cfg: ModelConfig,
    source: Box<dyn TensorSource>,
    tokenizer: Tokenizer,
    template: Option<String>,
    /// Where `template` was read (a file and the field in it).
    template_origin: String,
    bos_text: String,
    eos_text: String,
    name: String,
    file: Option<Arc<GgufFile>>,
}

fn stem(path: &Path) -> String {
    path.file_stem()
        .or_else(|| path.file_name())
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default()
}

fn open_gguf(path: &Path) -> Result<Parts, ModelError> {
    let file = Arc::new(GgufFile::open(path)?);
    let cfg = ModelConfig::from_gguf(&file)?;
    let tokenizer = Tokenizer::from_gguf(&file)?;
    if tokenizer.vocab_size() != cfg.vocab_size {
        return Err(ModelError::Config(format!(
            "{}: the vocabulary has {} tokens but the model {}",
            path.display(),
            tokenizer.vocab_size(),
            cfg.vocab_size
        )));
    }
    let text = |id: Option<u32>| {
        id.and_then(|i| tokenizer.token_text(i))
            .unwrap_or("")
            .to_owned()
    };
    let template = file
        .get_opt("tokenizer.chat_template", "a string", |v| v.as_str())?
        .map(str::to_owned);
    let name = file
        .get_opt("general.name", "a string", |v| v.as_str())?
        .map(str::to_owned)
        .unwrap_or_else(|| stem(path));
    Ok(Parts {
        bos_text: text(tokenizer.bos()),
        eos_text: text(tokenizer.eos()),
        cfg,
        source: Box::new(GgufSource(file.clone())),
        tokenizer,
        template,
        template_origin: format!("{}: tokenizer.chat_template", path.display()),
        name,
        file: Some(file),
    })
}

fn open_folder(dir: &Path) -> Result<Parts, ModelError> {
    let (json, cfg) = hf::read_config(dir)?;
    let tensors = HfTensors::open(dir)?;
    let mut t = hf::read_tokenizer(dir, &json)?;
    let n = t.tokenizer.vocab_size();
    if n > cfg.vocab_size {
        return Err(ModelError::Config(format!(
            "{}: tokenizer.json has {n} tokens but config.json's vocab_size is {}",
            dir.display(),
            cfg.vocab_size
        )));
    }
    // Embeddings are often padded past the tokenizer (Qwen2: 151936 rows, 151665 tokens).
    t.tokenizer.pad_vocab(cfg.vocab_size);
    Ok(Parts {
        cfg,
        source: Box::new(tensors),
        tokenizer: t.tokenizer,
        template: t.chat_template,
        template_origin: t.chat_template_origin,
        bos_text: t.bos_text,
        eos_text: t.eos_text,
        name: stem(dir),
        file: None,
    })
}
