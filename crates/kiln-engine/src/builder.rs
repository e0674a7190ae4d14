//! Building an engine over a loaded model: the memory budget split between weights,
//! activations and the KV cache, and the scheduler's limits.

use std::sync::Arc;

use kiln_model::{Backend, Model, ModelError};
use kiln_tokenizer::Tokenizer;

use crate::engine::{Engine, EngineConfig};
use crate::runner::ModelRunner;

/// How large an engine to build. Every front end (run, chat, bench, serve, refinement) makes
/// its engine through this one place.
#[derive(Debug, Clone)]
pub struct EngineBuilder {
    /// Budget in bytes for the weights, one step's activations and the KV cache together.
    pub max_memory_bytes: usize,
    /// Scheduler limits.
    pub config: EngineConfig,
}

impl Default for EngineBuilder {
    fn default() -> Self {
        EngineBuilder {
            max_memory_bytes: 1 << 30,
            config: EngineConfig::default(),
        }
    }
}

/// What a built engine holds, for logs.
#[derive(Debug, Clone, Copy)]
pub struct EngineSize {
    /// Bytes given to the KV cache.
    pub kv_bytes: usize,
    /// Positions the KV cache holds.
    pub kv_tokens: usize,
    /// Bytes of activations one step needs, as estimated.
    pub activation_bytes: usize,
}

impl EngineBuilder {
    /// Bytes of activations one step takes: hidden states, q/k/v, attention, FFN, and the
    /// rows of logits.
    pub fn activation_bytes(&self, cfg: &kiln_model::ModelConfig) -> usize {
        let c = &self.config;
        4 * (c.max_batch_tokens * (6 * cfg.dim + 2 * cfg.kv_dim() + 2 * cfg.ffn_dim)
            + c.max_running.max(crate::runner::MIN_LOGIT_ROWS) * (cfg.dim + 2 * cfg.vocab_size))
    }

    /// An engine over `model`, whose weights take `weight_bytes` where they live (a GPU may
    /// hold a quantized file as f16); the KV cache gets what the budget leaves.
    pub fn build<B: Backend>(
        &self,
        model: Model<B>,
        tokenizer: Arc<Tokenizer>,
        weight_bytes: usize,
    ) -> Result<(Engine<ModelRunner<B>>, EngineSize), ModelError> {
        self.build_with_draft(model, tokenizer, weight_bytes, None::<(Model<B>, usize)>)
    }

    /// [`EngineBuilder::build`] with a draft model for speculative decoding (its model and
    /// the bytes its weights take): the budget then holds both models' weights and
    /// activations, and the KV cache what is left, split so that both caches hold the same
    /// number of positions.
    pub fn build_with_draft<B: Backend, D: Backend + 'static>(
        &self,
        model: Model<B>,
        tokenizer: Arc<Tokenizer>,
        weight_bytes: usize,
        draft: Option<(Model<D>, usize)>,
    ) -> Result<(Engine<ModelRunner<B>>, EngineSize), ModelError> {
        let c = &self.config;
        if c.max_batch_tokens == 0 || c.max_running == 0 {
            return Err(ModelError::Input(
                "the engine needs at least one token per step and one running sequence (--max-batch-tokens, --max-running)".into(),
            ));
        }
        if !(0.0..=1.0).contains(&c.draft_p_min) {
            return Err(ModelError::Input(format!(
                "draft_p_min {} (--draft-p-min): a probability, 0 to 1",
                c.draft_p_min
            )));
        }
        let mut act = self.activation_bytes(&model.cfg);
        let mut weights = weight_bytes;
        if let Some((d, w)) = &draft {
            act += self.activation_bytes(&d.cfg);
            weights += w;
        }
        let kv = self
            .max_memory_bytes
            .checked_sub(weights + act)
            .filter(|&b| b > 0)
            .ok_or_else(|| {
                ModelError::OutOfMemory(format!(
                    "the KV cache: the memory budget of {} MiB (--max-memory-mb) leaves nothing once the weights take {} MiB and activations {} MiB",
                    self.max_memory_bytes >> 20,
                    weights >> 20,
                    act >> 20
                ))
            })?;
        // Both caches get the same number of blocks.
        let per = model.kv_block_bytes().max(1);
        let per_draft = draft.as_ref().map_or(0, |(d, _)| d.kv_block_bytes().max(1));
        let blocks = kv / (per + per_draft);
        let runner = ModelRunner::new(model, blocks * per, c.max_batch_tokens, c.max_running)?;
        let size = EngineSize {
            kv_bytes: blocks * (per + per_draft),
            kv_tokens: runner.kv_capacity_tokens(),
            activation_bytes: act,
        };
        let mut engine = Engine::new(runner, tokenizer, c.clone());
        if let Some((d, _)) = draft {
            let dr = ModelRunner::new(d, blocks * per_draft, c.max_batch_tokens, c.max_running)?;
            engine = engine.with_draft(Box::new(dr))?;
        }
        Ok((engine, size))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::{Device, DeviceKind};

    /// Limits that cannot work are refused by name before anything is sized.
    #[test]
    fn absurd_limits_are_refused_by_name() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../tests/fixtures/tiny-llama/model.gguf");
        for (config, word) in [
            (
                EngineConfig {
                    max_running: 0,
                    ..Default::default()
                },
                "--max-running",
            ),
            (
                EngineConfig {
                    draft_p_min: 1.5,
                    ..Default::default()
                },
                "draft_p_min 1.5",
            ),
            (
                EngineConfig {
                    draft_p_min: f32::NAN,
                    ..Default::default()
                },
                "draft_p_min NaN",
            ),
        ] {
            let b = match Device::open(DeviceKind::Cpu, 1).unwrap() {
                Device::Cpu(b) => b,
                #[allow(unreachable_patterns)]
                _ => unreachable!("a CPU was asked for"),
            };
            let m = kiln_model::loader::load(&path, b, &Default::default()).unwrap();
            let builder = EngineBuilder {
                max_memory_bytes: 64 << 20,
                config,
            };
            let e = builder
                .build(m.model, Arc::new(m.tokenizer), m.weight_bytes)
                .err()
                .expect("refused");
            assert!(e.to_string().contains(word), "{e}");
        }
    }
}
