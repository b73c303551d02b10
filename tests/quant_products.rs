//! ggml block types (Q8_0, Q4_0, Q4_1, Q4_K, Q6_K) dequantized inside the GPU kernels, against
//! float64 on the same blocks (dequantized by `reference::dequant`, itself held against the
//! `gguf` Python package in tests/gguf_dequant.rs): the product kernels every adapter runs
//! (`matvec` for decode, `gemm` and `gemm_direct` for prompts) and the embedding gather. Fresh
//! random blocks each run (the seed is printed), outputs poisoned with NaN first.

mod common;

use diffattn::gpu::{Const, ShaderSpec, UniformArena};
use diffattn::model::WeightDtype;
use diffattn::reference::dequant;
use diffattn::testing::{
    Rng, column_product_cases, norm_product_cases, quantized_product_cases, random_blocks,
    run_product_case,
};

#[test]
fn quantized_products_match_float64() {
    let gpu = common::gpu();
    let seed = common::fresh_seed("quantized_products_match_float64");
    let cases = quantized_product_cases(seed);
    let mut worst = 0.0f64;
    let mut failed = vec![];
    for case in &cases {
        let r = pollster::block_on(run_product_case(&gpu, case)).unwrap();
        worst = worst.max(r.rel_l2);
        if !r.pass {
            failed.push(format!(
                "{} on {}: rel L2 {:.2e} (tolerance {:.0e})",
                r.case, r.path, r.rel_l2, r.tolerance
            ));
        }
    }
    println!(
        "{} quantized products: worst rel L2 {worst:.2e}",
        cases.len()
    );
    assert!(failed.is_empty(), "{}", failed.join("\n"));
    // Every type, every portable kernel.
    for t in WeightDtype::QUANTIZED {
        for k in ["matvec", "matvec_serial", "gemm", "gemm_direct"] {
            assert!(cases.iter().any(|c| c.weights == t && c.kernel == k));
        }
    }
}

/// The one-token kernels with the RMSNorm before them folded in (the decode step's q/k/v/lambda
/// and gate/up products and the LM head) against float64 of norm-then-product.
#[test]
fn products_with_a_folded_norm_match_float64() {
    let gpu = common::gpu();
    let seed = common::fresh_seed("products_with_a_folded_norm_match_float64");
    for case in norm_product_cases(seed) {
        let r = pollster::block_on(run_product_case(&gpu, &case)).unwrap();
        println!("{} on {}: rel L2 {:.2e}", r.case, r.path, r.rel_l2);
        assert!(
            r.pass,
            "{} on {}: rel L2 {:.2e} (tolerance {:.0e})",
            r.case, r.path, r.rel_l2, r.tolerance
        );
    }
}

/// Every product kernel writing a column range of wider rows (`y_stride`, `y_offset`: the share of
/// a fused product whose weights differ in type) against float64, the columns around it intact.
#[test]
fn products_into_a_column_range_match_float64() {
    let gpu = common::gpu();
    let seed = common::fresh_seed("products_into_a_column_range_match_float64");
    let cases = column_product_cases(&gpu, seed);
    for case in &cases {
        let r = pollster::block_on(run_product_case(&gpu, case)).unwrap();
        println!("{} on {}: rel L2 {:.2e}", r.case, r.path, r.rel_l2);
        assert!(
            r.pass,
            "{} on {}: rel L2 {:.2e} (tolerance {:.0e}), or a write outside its columns",
            r.case, r.path, r.rel_l2, r.tolerance
        );
    }
    for k in ["matvec", "matvec_serial", "gemm", "gemm_direct"] {
        assert!(cases.iter().any(|c| c.kernel == k && c.columns));
    }
}

/// The embedding gather of a quantized table (SmolLM2's is Q8_0) gives the dequantized rows
/// exactly: each value is at most one rounding of an exact product, and the ids hit the first
/// row, the last and rows whose blocks start mid-word.
#[test]
fn quantized_embedding_rows_are_exact() {
    let gpu = common::gpu();
    let seed = common::fresh_seed("quantized_embedding_rows_are_exact");
    let mut rng = Rng::new(seed);
    for dtype in WeightDtype::QUANTIZED {
        let (vocab, d) = (13usize, if dtype.block_size() == 256 { 512 } else { 96 });
        let table = random_blocks(&mut rng, dtype, vocab * d, 0.5);
        let want = dequant::dequantize(dtype.ggml(), &table, (vocab * d) as u64).unwrap();
        let ids: Vec<u32> = vec![0, 12, 1, 5, 7, 3, 12];
        let n = ids.len();
        let idb = gpu.storage_init("ids", bytemuck::cast_slice(&ids)).unwrap();
        let tb = gpu.storage_init("table", &table).unwrap();
        let out = gpu.storage("out", (n * d * 4) as u64).unwrap();
        gpu.poison(&out);
        let mut arena = UniformArena::new(&gpu, "step", 1);
        arena.set(0, &[n as u32, 0u32, 0, 0]);
        arena.upload(&gpu, 1);
        // (d, first row, rows, 0): the whole table in one binding.
        let params = gpu.uniform("params", &[d as u32, 0u32, vocab as u32, 0]);
        let spec = ShaderSpec::new("embed").with("WEIGHT_DTYPE", Const::U32(dtype.shader_code()));
        let pipeline = gpu.pipeline(&spec).unwrap();
        let bind = gpu.bind(&pipeline, &[arena.buffer(), &params, &idb, &tb, &out]);
        let mut enc = gpu.device.create_command_encoder(&Default::default());
        {
            let mut pass = enc.begin_compute_pass(&Default::default());
            pass.set_pipeline(&pipeline);
            pass.set_bind_group(0, &bind, &[0]);
            pass.dispatch_workgroups((n * d).div_ceil(64) as u32, 1, 1);
        }
        gpu.queue.submit([enc.finish()]);
        let got = pollster::block_on(gpu.read_f32(&out, n * d)).unwrap();
        gpu.take_error("embed").unwrap();
        for (t, &id) in ids.iter().enumerate() {
            for c in 0..d {
                let (g, w) = (got[t * d + c] as f64, want[id as usize * d + c]);
                assert!(
                    (g - w).abs() <= w.abs() * 2f64.powi(-23),
                    "{dtype:?} id {id} column {c}: GPU {g}, float64 {w}"
                );
            }
        }
    }
}
