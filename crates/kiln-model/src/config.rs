//! The decoder's shape, read from model metadata.

use kiln_gguf::GgufFile;

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
        if self.vocab_size == 0 || self.context_length == 0 {
            return bad("vocabulary size and context length must be positive".into());
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
