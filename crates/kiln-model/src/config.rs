//! The decoder's shape, read from model metadata.

use kiln_formats::gguf::GgufFile;

use crate::ModelError;

/// Architectures kiln runs; all are one decoder with different switches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arch {
    /// Llama, TinyLlama, SmolLM, Mistral-style.
    Llama,
    /// Qwen2 / Qwen2.5: biases on q, k, v.
    Qwen2,
    /// Phi-3: fused qkv and gate/up.
    Phi3,
}

impl Arch {
    /// The GGUF `general.architecture` name.
    pub fn name(self) -> &'static str {
        match self {
            Arch::Llama => "llama",
            Arch::Qwen2 => "qwen2",
            Arch::Phi3 => "phi3",
        }
    }
}

/// How rotary embeddings pair up the dimensions of a head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RopeStyle {
    /// Adjacent pairs (2i, 2i+1): llama weights as converted to GGUF.
    Interleaved,
    /// Halves (i, i + d/2): GPT-NeoX, Qwen2, Phi-3, and Hugging Face llama checkpoints.
    Halves,
}

/// Everything the decoder needs to know about a model's shape.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelConfig {
    /// Architecture.
    pub arch: Arch,
    /// Number of transformer blocks.
    pub n_layers: usize,
    /// Hidden size.
    pub dim: usize,
    /// Feed-forward inner size.
    pub ffn_dim: usize,
    /// Query heads.
    pub n_heads: usize,
    /// Key/value heads (grouped-query attention when fewer than `n_heads`).
    pub n_kv_heads: usize,
    /// Size of one head.
    pub head_dim: usize,
    /// How many dimensions of each head are rotated.
    pub rope_dim: usize,
    /// RoPE base frequency.
    pub rope_base: f32,
    /// Pairing of rotated dimensions.
    pub rope_style: RopeStyle,
    /// RMSNorm epsilon.
    pub rms_eps: f32,
    /// Vocabulary size (rows of the embedding).
    pub vocab_size: usize,
    /// Context length the model was trained for.
    pub context_length: usize,
    /// Whether q, k, v projections carry biases.
    pub qkv_bias: bool,
}

/// Largest vocabulary accepted from a model file.
pub const MAX_VOCAB: usize = kiln_tokenizer::MAX_VOCAB;

/// Largest context length accepted from a model file.
pub const MAX_CONTEXT: usize = 1 << 24;

impl ModelConfig {
    /// Reads the shape from GGUF metadata (`{arch}.*` keys) and checks it for sense.
    pub fn from_gguf(f: &GgufFile) -> Result<Self, ModelError> {
        let arch_name = f.get_str("general.architecture")?;
        let arch = match arch_name {
            "llama" => Arch::Llama,
            "qwen2" => Arch::Qwen2,
            "phi3" => Arch::Phi3,
            other => {
                return Err(ModelError::Unsupported(format!(
                    "{}: architecture `{other}` is not supported (kiln runs llama, qwen2, phi3)",
                    f.path().display()
                )))
            }
        };
        let k = |s: &str| format!("{arch_name}.{s}");
        let u = |s: &str| -> Result<usize, ModelError> { Ok(f.get_u64(&k(s))? as usize) };
        let n_heads = u("attention.head_count")?;
        let dim = u("embedding_length")?;
        let n_kv_heads = match f.get(&k("attention.head_count_kv")) {
            Some(_) => u("attention.head_count_kv")?,
            None => n_heads,
        };
        let head_dim = dim.checked_div(n_heads).unwrap_or(0);
        let rope_dim = match f.get(&k("rope.dimension_count")) {
            Some(_) => u("rope.dimension_count")?,
            None => head_dim,
        };
        let vocab_size = match f.get(&k("vocab_size")) {
            Some(_) => u("vocab_size")?,
            None => f.get_array("tokenizer.ggml.tokens")?.len(),
        };
        if f.get(&k("rope.scaling.type"))
            .is_some_and(|v| v.as_str() != Some("none"))
        {
            return Err(ModelError::Unsupported(format!(
                "{}: RoPE scaling `{}` is not implemented",
                f.path().display(),
                f.get_str(&k("rope.scaling.type"))?
            )));
        }
        let cfg = ModelConfig {
            arch,
            n_layers: u("block_count")?,
            dim,
            ffn_dim: u("feed_forward_length")?,
            n_heads,
            n_kv_heads,
            head_dim,
            rope_dim,
            rope_base: f
                .get_opt(&k("rope.freq_base"), "a number", |v| v.as_f64())?
                .unwrap_or(10000.0) as f32,
            rope_style: match arch {
                Arch::Llama => RopeStyle::Interleaved,
                Arch::Qwen2 | Arch::Phi3 => RopeStyle::Halves,
            },
            rms_eps: f
                .get_opt(&k("attention.layer_norm_rms_epsilon"), "a number", |v| {
                    v.as_f64()
                })?
                .unwrap_or(1e-5) as f32,
            vocab_size,
            context_length: u("context_length")?,
            qkv_bias: arch == Arch::Qwen2,
        };
        cfg.validate(&f.path().display().to_string())?;
        Ok(cfg)
    }

    /// Reads the shape from a Hugging Face `config.json` (already parsed); `source` names the
    /// file in errors. Knows `LlamaForCausalLM`, `Qwen2ForCausalLM` and `Phi3ForCausalLM`, and
    /// refuses settings the decoder does not implement (RoPE scaling, biases it has no slot for).
    pub fn from_hf_json(source: &str, c: &serde_json::Value) -> Result<Self, ModelError> {
        let bad = |what: String| ModelError::Config(format!("{source}: {what}"));
        let unsupported = |what: String| ModelError::Unsupported(format!("{source}: {what}"));
        let archs: Vec<&str> = c
            .get("architectures")
            .and_then(|a| a.as_array())
            .map(|a| a.iter().filter_map(|v| v.as_str()).collect())
            .unwrap_or_default();
        let model_type = c.get("model_type").and_then(|v| v.as_str()).unwrap_or("");
        let arch = match (archs.first().copied(), model_type) {
            (Some("LlamaForCausalLM"), _) | (None, "llama") => Arch::Llama,
            (Some("Qwen2ForCausalLM"), _) | (None, "qwen2") => Arch::Qwen2,
            (Some("Phi3ForCausalLM"), _) | (None, "phi3") => Arch::Phi3,
            (other, _) => {
                return Err(unsupported(format!(
                    "architecture `{}` is not supported (kiln runs LlamaForCausalLM, Qwen2ForCausalLM and Phi3ForCausalLM)",
                    other.unwrap_or(if model_type.is_empty() { "(none given)" } else { model_type })
                )))
            }
        };
        let usize_key = |k: &str| -> Result<Option<usize>, ModelError> {
            match c.get(k) {
                None | Some(serde_json::Value::Null) => Ok(None),
                Some(v) => v
                    .as_u64()
                    .and_then(|n| usize::try_from(n).ok())
                    .map(Some)
                    .ok_or_else(|| bad(format!("`{k}` is {v}, expected a non-negative integer"))),
            }
        };
        let need = |k: &str| -> Result<usize, ModelError> {
            usize_key(k)?.ok_or_else(|| bad(format!("missing `{k}`")))
        };
        let float_key = |k: &str, obj: &serde_json::Value| -> Result<Option<f64>, ModelError> {
            match obj.get(k) {
                None | Some(serde_json::Value::Null) => Ok(None),
                Some(v) => v
                    .as_f64()
                    .map(Some)
                    .ok_or_else(|| bad(format!("`{k}` is {v}, expected a number"))),
            }
        };
        let bool_key = |k: &str| c.get(k).and_then(|v| v.as_bool());

        let dim = need("hidden_size")?;
        let n_heads = need("num_attention_heads")?;
        let n_kv_heads = usize_key("num_key_value_heads")?.unwrap_or(n_heads);
        let head_dim = dim.checked_div(n_heads).unwrap_or(0);
        if let Some(hd) = usize_key("head_dim")? {
            if hd != head_dim {
                return Err(unsupported(format!(
                    "head_dim {hd} differs from hidden_size / num_attention_heads = {head_dim}; the decoder needs them equal"
                )));
            }
        }
        // transformers 5 folds RoPE settings into `rope_parameters`; 4.x kept `rope_theta`
        // and `rope_scaling` at the top level. Read either.
        let rope = c.get("rope_parameters").filter(|v| v.is_object());
        let scaling = c.get("rope_scaling").filter(|v| !v.is_null());
        for obj in [rope, scaling].into_iter().flatten() {
            let ty = obj
                .get("rope_type")
                .or_else(|| obj.get("type"))
                .and_then(|v| v.as_str())
                .unwrap_or("default");
            if ty != "default" {
                let hint = if matches!(ty, "longrope" | "su" | "yarn") && arch == Arch::Phi3 {
                    " (Phi-3's long-context variants; the 4k-context models run)"
                } else {
                    ""
                };
                return Err(unsupported(format!(
                    "RoPE scaling `{ty}` is not implemented{hint}"
                )));
            }
        }
        let rope_base = match rope
            .map(|r| float_key("rope_theta", r))
            .transpose()?
            .flatten()
        {
            Some(t) => t,
            None => float_key("rope_theta", c)?.unwrap_or(10000.0),
        };
        let partial = match rope
            .map(|r| float_key("partial_rotary_factor", r))
            .transpose()?
            .flatten()
        {
            Some(p) => p,
            None => float_key("partial_rotary_factor", c)?.unwrap_or(1.0),
        };
        if !(partial > 0.0 && partial <= 1.0) {
            return Err(bad(format!(
                "partial_rotary_factor {partial} is outside (0, 1]"
            )));
        }
        let rope_dim = (head_dim as f64 * partial).round() as usize;
        if let Some(act) = c.get("hidden_act").and_then(|v| v.as_str()) {
            if act != "silu" {
                return Err(unsupported(format!(
                    "hidden_act `{act}` is not supported (the decoder's feed-forward is SwiGLU)"
                )));
            }
        }
        if bool_key("mlp_bias") == Some(true) {
            return Err(unsupported(
                "mlp_bias is true; the decoder has no feed-forward biases".into(),
            ));
        }
        let attention_bias = bool_key("attention_bias") == Some(true);
        if attention_bias && arch == Arch::Llama {
            return Err(unsupported(
                "attention_bias is true; the decoder has no output-projection bias".into(),
            ));
        }
        if arch == Arch::Qwen2 && bool_key("use_sliding_window") == Some(true) {
            return Err(unsupported(
                "use_sliding_window is true; sliding-window attention is not implemented".into(),
            ));
        }
        let mut context_length = need("max_position_embeddings")?;
        // Phi-3 attends over a window (2047 positions for mini-4k). Up to the window the
        // result is exact; past it kiln would differ, so the usable context stops there.
        if arch == Arch::Phi3 {
            if let Some(w) = usize_key("sliding_window")? {
                context_length = context_length.min(w.max(1));
            }
        }
        let cfg = ModelConfig {
            arch,
            n_layers: need("num_hidden_layers")?,
            dim,
            ffn_dim: need("intermediate_size")?,
            n_heads,
            n_kv_heads,
            head_dim,
            rope_dim,
            rope_base: rope_base as f32,
            // Hugging Face checkpoints rotate halves; only llama.cpp's converter permutes
            // q/k rows into adjacent pairs.
            rope_style: RopeStyle::Halves,
            rms_eps: float_key("rms_norm_eps", c)?.unwrap_or(1e-6) as f32,
            vocab_size: need("vocab_size")?,
            context_length,
            qkv_bias: arch == Arch::Qwen2 || attention_bias,
        };
        cfg.validate(source)?;
        Ok(cfg)
    }

    /// Checks that the numbers describe a decoder kiln can run.
    pub fn validate(&self, source: &str) -> Result<(), ModelError> {
        let bad = |what: String| Err(ModelError::Config(format!("{source}: {what}")));
        if self.n_layers == 0 || self.n_layers > 1024 {
            return bad(format!(
                "block count {} is out of range 1..=1024",
                self.n_layers
            ));
        }
        if self.dim == 0 || self.dim > 65536 || self.ffn_dim == 0 || self.ffn_dim > 1 << 20 {
            return bad(format!(
                "hidden size {} / feed-forward size {} out of range",
                self.dim, self.ffn_dim
            ));
        }
        if self.n_heads == 0 || !self.dim.is_multiple_of(self.n_heads) {
            return bad(format!(
                "head count {} does not divide hidden size {}",
                self.n_heads, self.dim
            ));
        }
        if self.n_kv_heads == 0 || !self.n_heads.is_multiple_of(self.n_kv_heads) {
            return bad(format!(
                "key/value head count {} does not divide head count {}",
                self.n_kv_heads, self.n_heads
            ));
        }
        if self.rope_dim > self.head_dim || !self.rope_dim.is_multiple_of(2) {
            return bad(format!(
                "rope dimension count {} must be even and at most the head size {}",
                self.rope_dim, self.head_dim
            ));
        }
        // The largest real vocabularies have about 256k tokens; a padded vocabulary and the
        // logits rows are allocated from this number, so an absurd one must stop here.
        if self.vocab_size == 0 || self.vocab_size > MAX_VOCAB {
            return bad(format!(
                "vocabulary size (vocab_size) {} is out of range 1..={MAX_VOCAB}",
                self.vocab_size
            ));
        }
        if self.context_length == 0 || self.context_length > MAX_CONTEXT {
            return bad(format!(
                "context length (max_position_embeddings / context_length) {} is out of range 1..={MAX_CONTEXT}",
                self.context_length
            ));
        }
        if !(self.rope_base.is_finite() && self.rope_base > 0.0) {
            return bad(format!("rope base {} must be positive", self.rope_base));
        }
        if !(self.rms_eps.is_finite() && self.rms_eps > 0.0) {
            return bad(format!("RMSNorm epsilon {} must be positive", self.rms_eps));
        }
        Ok(())
    }

    /// Width of the key/value projections.
    pub fn kv_dim(&self) -> usize {
        self.n_kv_heads * self.head_dim
    }
}
