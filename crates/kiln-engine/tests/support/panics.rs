//! A runner whose every step panics, as a bug in a kernel would; shared by the engine's and
//! the server's panic tests (included with `#[path]`).

use kiln_engine::{Runner, Slice};
use kiln_model::sample::{Adjust, RowSampling, Sampled};
use kiln_model::ModelError;

pub struct Panics;

impl Runner for Panics {
    fn vocab_size(&self) -> usize {
        399
    }
    fn context_length(&self) -> usize {
        64
    }
    fn block_size(&self) -> usize {
        16
    }
    fn n_blocks(&self) -> usize {
        8
    }
    fn step(
        &mut self,
        _: &[Slice<'_>],
        _: &[RowSampling],
        _: &[Adjust],
        _: &[u32],
        _: &mut Vec<Sampled>,
    ) -> Result<(), ModelError> {
        panic!("a bug in a kernel");
    }
    fn step_all(&mut self, _: &[Slice<'_>], _: &mut Vec<f32>) -> Result<(), ModelError> {
        panic!("a bug in a kernel");
    }
    fn max_logit_rows(&self) -> usize {
        0
    }
    fn copy_block(&mut self, _: u32, _: u32) {}
}
