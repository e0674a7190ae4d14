//! A model runner for server tests: 50 ms a step, token 300 for every row.

use std::time::Duration;

use kiln_engine::{Runner, Slice};
use kiln_model::sample::{Adjust, RowSampling, Sampled};
use kiln_model::ModelError;

/// A runner that takes 50 ms a step and always answers token 300.
pub struct Slow;

impl Runner for Slow {
    fn vocab_size(&self) -> usize {
        399
    }
    fn context_length(&self) -> usize {
        256
    }
    fn block_size(&self) -> usize {
        16
    }
    fn n_blocks(&self) -> usize {
        16
    }
    fn step(
        &mut self,
        _: &[Slice<'_>],
        rows: &[RowSampling],
        _: &[Adjust],
        _: &[u32],
        out: &mut Vec<Sampled>,
    ) -> Result<(), ModelError> {
        std::thread::sleep(Duration::from_millis(50));
        out.clear();
        out.extend(rows.iter().map(|_| Sampled::token(300)));
        Ok(())
    }
    fn step_all(&mut self, _: &[Slice<'_>], _: &mut Vec<f32>) -> Result<(), ModelError> {
        Err(ModelError::Input("not used".into()))
    }
    fn max_logit_rows(&self) -> usize {
        4
    }
    fn copy_block(&mut self, _: u32, _: u32) {}
}
