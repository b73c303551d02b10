//! Helpers shared by the integration tests.
#![allow(dead_code)]

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
