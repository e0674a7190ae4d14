//! Opening a model file: config, weights, tokenizer and chat template in one step.

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use kiln_gguf::GgufFile;

use crate::backend::Backend;
use crate::chat::{ChatTemplate, CHATML};
use crate::tokenizer::Tokenizer;
use crate::{Model, ModelConfig, ModelError, Weights};

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
    /// Seconds spent loading.
    pub load_s: f64,
    /// The open file, kept mapped.
    pub file: Arc<GgufFile>,
}

/// Loads a GGUF model onto `backend`.
pub fn load_gguf<B: Backend>(path: &Path, backend: B) -> Result<LoadedModel<B>, ModelError> {
    let t0 = Instant::now();
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
    let weights = Weights::from_gguf(&file, &cfg)?;
    let model = Model::new(backend, cfg, weights)?;
    let text = |id: Option<u32>| {
        id.and_then(|i| tokenizer.token_text(i))
            .unwrap_or("")
            .to_owned()
    };
    let source = file
        .get_opt("tokenizer.chat_template", "a string", |v| v.as_str())?
        .unwrap_or(CHATML);
    let template = ChatTemplate::new(source, &text(tokenizer.bos()), &text(tokenizer.eos()))?;
    let name = file
        .get_opt("general.name", "a string", |v| v.as_str())?
        .map(str::to_owned)
        .unwrap_or_else(|| {
            path.file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default()
        });
    Ok(LoadedModel {
        model,
        tokenizer,
        template,
        name,
        load_s: t0.elapsed().as_secs_f64(),
        file,
    })
}
