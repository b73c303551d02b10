//! Helpers shared by the integration tests.
#![allow(dead_code)]

use diffattn::generate::GenerateOptions;
use diffattn::model::Engine;
use diffattn::sample::SamplingParams;
use diffattn::{Gpu, GpuOptions};

/// Opens the default adapter; with no adapter at all the test fails with the library's message
/// (CI installs lavapipe, so a missing adapter is a broken setup, not a reason to skip).
pub fn gpu() -> Gpu {
    Gpu::new_blocking(&GpuOptions::default()).unwrap_or_else(|e| panic!("{e}"))
}

/// A fresh seed per run (printed, so a failure can be replayed with DIFFATTN_TEST_SEED).
pub fn fresh_seed(test: &str) -> u64 {
    let seed = std::env::var("DIFFATTN_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        });
    eprintln!("{test}: seed {seed} (replay with DIFFATTN_TEST_SEED={seed})");
    seed
}

/// Teacher forcing: the logits after `prompt`, then after each token of `then` fed in turn
/// (1 + then.len() rows), from an empty cache.
pub fn teacher_forced(engine: &mut Engine, prompt: &[u32], then: &[u32]) -> Vec<Vec<f32>> {
    engine.reset();
    let mut rows = vec![engine.prefill_blocking(prompt).unwrap()];
    for &id in then {
        rows.push(engine.step_blocking(id).unwrap());
    }
    rows
}

/// Greedy generation of `max_tokens` tokens that does not stop at EOS.
pub fn greedy(max_tokens: usize) -> GenerateOptions {
    GenerateOptions {
        max_tokens,
        sampling: SamplingParams::greedy(),
        stop_at_eos: false,
        ..Default::default()
    }
}
