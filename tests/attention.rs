//! Every attention kernel against the float64 reference, on fresh random inputs.

mod common;

use diffattn::attention::{
    self, AttentionCall, AttentionConfig, HostInputs, Kernel, KvDtype, Mode,
};
use diffattn::reference;
use diffattn::testing::{Case, Rng, conformance_cases_for, run_case};

fn run_all(cases: Vec<Case>, seed: u64) {
    let gpu = common::gpu();
    let mut failures = Vec::new();
    for (i, mut case) in cases.into_iter().enumerate() {
        case.seed = seed.wrapping_add(i as u64);
        let r = pollster::block_on(run_case(&gpu, &case))
            .unwrap_or_else(|e| panic!("{}: {e}", case.name()));
        if !r.pass {
            failures.push(format!(
                "{}: rel_l2 {:.3e} > {:.0e} (max abs {:.3e})",
                r.case, r.rel_l2, r.tolerance, r.max_abs
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "failed cases:\n{}",
        failures.join("\n")
    );
}

/// The conformance list plus the cases of every fast path the adapter has.
#[test]
fn conformance_suite_with_fresh_inputs() {
    let gpu = common::gpu();
    run_all(
        conformance_cases_for(&gpu),
        common::fresh_seed("conformance"),
    );
}

/// Asking for a tensor-core kernel where the adapter has none is a clear error, not a silent
/// fallback, and `Auto` never picks one there.
#[test]
fn unavailable_fast_paths_are_refused_by_name() {
    let gpu = common::gpu();
    // The subgroup kernel reads f16 K/V only: with f32 it is refused everywhere.
    let f32_op =
        attention::AttentionOp::new(&gpu, cfg(Mode::Diff, 4, 2, 64, KvDtype::F32)).unwrap();
    let c = call(1, 256, true, 255);
    let err = f32_op
        .plan(&c, Kernel::DecodeSubgroup)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("subgroup decode kernel is not available"),
        "{err}"
    );
    assert_ne!(
        f32_op.plan(&c, Kernel::Auto).unwrap().kernel,
        Kernel::DecodeSubgroup
    );
    let cfg = cfg(Mode::Diff, 4, 2, 64, KvDtype::F16);
    let op = attention::AttentionOp::new(&gpu, cfg).unwrap();
    for (kernel, n) in [(Kernel::DecodeCoop, 1), (Kernel::FlashCoop, 64)] {
        let c = call(n, 256, true, 256 - n);
        if op.paths().contains(&kernel) {
            assert_eq!(op.plan(&c, kernel).unwrap().kernel, kernel);
            continue;
        }
        let err = op.plan(&c, kernel).unwrap_err().to_string();
        assert!(err.contains("cooperative-matrix"), "{err}");
        assert_ne!(op.plan(&c, Kernel::Auto).unwrap().kernel, kernel);
    }
    if !gpu.coop_f16 {
        let tuning = attention::DecodeTuning::for_layer(&gpu.info, 64);
        let why = attention::coop_decode_unavailable(&gpu, &cfg, &tuning).unwrap();
        assert!(why.contains("cooperative matrices"), "{why}");
    }
}

fn cfg(mode: Mode, heads: u32, kv_heads: u32, head_dim: u32, kv_dtype: KvDtype) -> AttentionConfig {
    AttentionConfig {
        heads,
        kv_heads,
        head_dim,
        mode,
        kv_dtype,
        scale: None,
    }
}

fn call(n_queries: u32, seq_len: u32, causal: bool, past_len: u32) -> AttentionCall {
    AttentionCall {
        n_queries,
        seq_len,
        causal,
        past_len,
    }
}

#[test]
fn edge_sizes_on_both_kernels() {
    let mut cases = Vec::new();
    for kernel in [Kernel::Flash, Kernel::Decode] {
        for (n, s, causal, past) in [
            (1, 1, false, 0),
            (1, 1, true, 0),
            (5, 1, false, 0),
            (2, 129, true, 127), // one key past a decode chunk
            (7, 33, true, 26),   // not a multiple of any tile
            (65, 65, true, 0),   // one row past a flash workgroup
            (3, 10, true, 50),   // offset beyond the cache: sees every key
            (4, 300, false, 0),
        ] {
            for mode in [Mode::Diff, Mode::Standard] {
                cases.push(Case {
                    cfg: cfg(mode, 2, 1, 32, KvDtype::F32),
                    call: call(n, s, causal, past),
                    kernel,
                    q_scale: 1.0,
                    seed: 0,
                    target_workgroups: None,
                    blocks: None,
                    subgroup: None,
                });
            }
        }
    }
    run_all(cases, common::fresh_seed("edge sizes"));
}

#[test]
fn explicit_scale_and_f16_kv_everywhere() {
    let mut cases = Vec::new();
    for (kernel, d) in [(Kernel::Flash, 64), (Kernel::Decode, 96)] {
        let mut c = cfg(Mode::Diff, 4, 2, d, KvDtype::F16);
        c.scale = Some(0.3);
        cases.push(Case {
            cfg: c,
            call: call(9, 140, true, 131),
            kernel,
            q_scale: 1.0,
            seed: 0,
            target_workgroups: None,
            blocks: None,
            subgroup: None,
        });
    }
    run_all(cases, common::fresh_seed("scale and f16"));
}

#[test]
fn large_logits_stay_finite_and_accurate() {
    let mut cases = Vec::new();
    for kernel in [Kernel::Flash, Kernel::Decode] {
        cases.push(Case {
            cfg: cfg(Mode::Diff, 2, 1, 64, KvDtype::F32),
            call: call(5, 500, true, 495),
            kernel,
            q_scale: 30.0,
            seed: 0,
            target_workgroups: None,
            blocks: None,
            subgroup: None,
        });
    }
    run_all(cases, common::fresh_seed("large logits"));
}

/// The pairing is checked, not assumed: an engine that paired halves (o_i with o_{i+h}) must fail.
#[test]
fn output_heads_pair_interleaved_query_heads() {
    let gpu = common::gpu();
    let seed = common::fresh_seed("pairing");
    let c = cfg(Mode::Diff, 4, 4, 32, KvDtype::F32);
    let k = call(6, 40, true, 34);
    let sh = attention::shapes(&c, &k);
    let mut rng = Rng::new(seed);
    let (q, kk, v, lam) = (
        rng.normals(sh.q.0, 1.0),
        rng.normals(sh.kv.0, 1.0),
        rng.normals(sh.kv.0, 1.0),
        rng.normals(sh.lam.0, 1.0),
    );
    let x = HostInputs {
        q: &q,
        k: &kk,
        v: &v,
        lam: &lam,
    };
    for kernel in [Kernel::Flash, Kernel::Decode] {
        let got = attention::attention_blocking(&gpu, &c, &k, &x, kernel).unwrap();
        let interleaved = reference::attention(&c, &k, &x).unwrap();
        // The halves-pairing a wrong engine would compute, from the same per-head outputs.
        let o = reference::head_outputs(&c, &k, &x).unwrap();
        let (h, d) = (4usize, 32usize);
        let mut halves = vec![0.0f64; 6 * h * d];
        for n in 0..6 {
            for i in 0..h {
                let l = 1.0 / (1.0 + (-(lam[n * h + i] as f64)).exp());
                for t in 0..d {
                    halves[(n * h + i) * d + t] =
                        o[(n * 2 * h + i) * d + t] - l * o[(n * 2 * h + h + i) * d + t];
                }
            }
        }
        let (_, right) = reference::compare(&got, &interleaved);
        let (_, wrong) = reference::compare(&got, &halves);
        assert!(
            right < 1e-5,
            "{kernel:?}: interleaved pairing error {right}"
        );
        assert!(
            wrong > 0.1,
            "{kernel:?}: output also matches halves pairing ({wrong}): pairing not tested"
        );
    }
}

#[test]
fn wrong_shapes_are_errors_naming_the_tensor() {
    let gpu = common::gpu();
    let c = cfg(Mode::Diff, 2, 1, 32, KvDtype::F32);
    let k = call(3, 10, false, 0);
    let sh = attention::shapes(&c, &k);
    let q = vec![0.5f32; sh.q.0 - 1];
    let kv = vec![0.5f32; sh.kv.0];
    let lam = vec![0.0f32; sh.lam.0];
    let x = HostInputs {
        q: &q,
        k: &kv,
        v: &kv,
        lam: &lam,
    };
    let err = attention::attention_blocking(&gpu, &c, &k, &x, Kernel::Auto)
        .unwrap_err()
        .to_string();
    assert_eq!(
        err,
        "tensor `q` has the wrong shape: expected (3, 4, 32) = 384 values, got 383 values"
    );

    let q = vec![0.5f32; sh.q.0];
    let short_lam = vec![0.0f32; 5];
    let x = HostInputs {
        q: &q,
        k: &kv,
        v: &kv,
        lam: &short_lam,
    };
    let err = attention::attention_blocking(&gpu, &c, &k, &x, Kernel::Auto)
        .unwrap_err()
        .to_string();
    assert_eq!(
        err,
        "tensor `lam` has the wrong shape: expected (3, 2) = 6 values, got 5 values"
    );

    let bad = cfg(Mode::Diff, 3, 2, 32, KvDtype::F32);
    let err = attention::attention_blocking(&gpu, &bad, &k, &x, Kernel::Auto)
        .unwrap_err()
        .to_string();
    assert_eq!(
        err,
        "invalid configuration: heads (3) must be a multiple of kv_heads (2)"
    );

    let bad = cfg(Mode::Diff, 2, 1, 36, KvDtype::F32);
    let err = attention::attention_blocking(&gpu, &bad, &k, &x, Kernel::Auto)
        .unwrap_err()
        .to_string();
    assert!(err.contains("head_dim 36"), "{err}");
}

#[test]
fn standard_mode_ignores_lam_and_matches_plain_attention() {
    let gpu = common::gpu();
    let seed = common::fresh_seed("standard");
    let c = cfg(Mode::Standard, 4, 2, 64, KvDtype::F32);
    let k = call(17, 50, true, 33);
    let sh = attention::shapes(&c, &k);
    let mut rng = Rng::new(seed);
    let (q, kk, v) = (
        rng.normals(sh.q.0, 1.0),
        rng.normals(sh.kv.0, 1.0),
        rng.normals(sh.kv.0, 1.0),
    );
    let x = HostInputs {
        q: &q,
        k: &kk,
        v: &v,
        lam: &[],
    };
    let got = attention::attention_blocking(&gpu, &c, &k, &x, Kernel::Auto).unwrap();
    let want = reference::head_outputs(&c, &k, &x).unwrap();
    let (_, rel) = reference::compare(&got, &want);
    assert!(rel < 1e-5, "rel {rel}");
}

/// Random inputs for `c` and `k`: (q, k, v, lam).
fn inputs(c: &AttentionConfig, k: &AttentionCall, seed: u64) -> [Vec<f32>; 4] {
    let sh = attention::shapes(c, k);
    let mut rng = Rng::new(seed);
    [
        rng.normals(sh.q.0, 1.0),
        rng.normals(sh.kv.0, 1.0),
        rng.normals(sh.kv.0, 1.0),
        rng.normals(sh.lam.0, 1.0),
    ]
}

fn host(x: &[Vec<f32>; 4]) -> HostInputs<'_> {
    HostInputs {
        q: &x[0],
        k: &x[1],
        v: &x[2],
        lam: &x[3],
    }
}

/// Causal positions near u32::MAX: refused where past_len + N + 1 would wrap in the kernels, and
/// right below that they run and see every key (so they equal the unmasked call).
#[test]
fn past_len_near_u32_max() {
    let gpu = common::gpu();
    let c = cfg(Mode::Diff, 2, 1, 32, KvDtype::F32);
    for (n, past) in [(1, u32::MAX - 1), (2, u32::MAX - 2), (1, u32::MAX)] {
        let k = call(n, 4, true, past);
        let x = inputs(&c, &k, 7);
        let e = attention::attention_blocking(&gpu, &c, &k, &host(&x), Kernel::Auto).unwrap_err();
        assert!(matches!(e, diffattn::Error::Config(_)), "{e:?}");
        assert_eq!(
            e.to_string(),
            format!(
                "invalid configuration: past_len {past} with {n} query rows puts positions beyond 4294967294"
            )
        );
    }
    for kernel in [Kernel::Flash, Kernel::Decode] {
        let k = call(2, 4, true, u32::MAX - 3);
        let x = inputs(&c, &k, 8);
        let got = attention::attention_blocking(&gpu, &c, &k, &host(&x), kernel).unwrap();
        let want = reference::attention(&c, &call(2, 4, false, 0), &host(&x)).unwrap();
        let (rel_l2, _) = reference::compare(&got, &want);
        assert!(rel_l2 < 1e-5, "{kernel:?}: rel L2 {rel_l2:.3e}");
    }
}

/// Head counts whose query-head count (2h) or sizes would overflow u32: a typed error, no panic.
#[test]
fn absurd_head_counts_are_refused() {
    let gpu = common::gpu();
    let k = call(1, 1, false, 0);
    let x = [vec![0.0f32; 64], vec![0.0; 32], vec![0.0; 32], vec![0.0; 2]];
    for (heads, kv_heads) in [(1u32 << 31, 1), (u32::MAX, u32::MAX), (1 << 17, 1 << 17)] {
        let c = cfg(Mode::Diff, heads, kv_heads, 32, KvDtype::F32);
        let e = attention::attention_blocking(&gpu, &c, &k, &host(&x), Kernel::Auto).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!(
                "invalid configuration: heads ({heads}) and kv_heads ({kv_heads}) must be at most 65536"
            )
        );
    }
    // Within the bounds, N x 2h x d beyond usize on 32-bit targets: still only a shape error.
    let c = cfg(Mode::Diff, 1 << 16, 1, 256, KvDtype::F32);
    let big = call(u32::MAX / 2, 1, false, 0);
    let e = attention::attention_blocking(&gpu, &c, &big, &host(&x), Kernel::Auto).unwrap_err();
    assert!(matches!(e, diffattn::Error::Shape { .. }), "{e:?}");
}

/// An output that is not finite (an infinite input, or finite inputs whose products overflow f32)
/// is an error from the library op itself, on every kernel, never data.
#[test]
fn non_finite_outputs_are_errors() {
    let gpu = common::gpu();
    let c = cfg(Mode::Diff, 2, 1, 32, KvDtype::F32);
    let k = call(3, 10, true, 7);
    for kernel in [Kernel::Flash, Kernel::Decode] {
        let mut x = inputs(&c, &k, 9);
        x[2][5] = f32::INFINITY;
        let e = attention::attention_blocking(&gpu, &c, &k, &host(&x), kernel).unwrap_err();
        assert!(
            matches!(e, diffattn::Error::NonFinite { .. }),
            "{kernel:?}: {e:?}"
        );
        assert!(
            e.to_string()
                .starts_with("the attention output holds a non-finite value"),
            "{e}"
        );
        // Finite but huge values: v x probability sums overflow.
        let mut x = inputs(&c, &k, 10);
        x[2].iter_mut().for_each(|v| *v = 3e38);
        let e = attention::attention_blocking(&gpu, &c, &k, &host(&x), kernel).unwrap_err();
        assert!(
            matches!(e, diffattn::Error::NonFinite { .. }),
            "{kernel:?}: {e:?}"
        );
    }
}

/// Where the subgroup decode kernel runs and the adapter is not a CPU one, `Auto` decodes with it,
/// with its own plan (blocks of its keys, the output written directly for one chunk), and the
/// result matches the float64 reference.
#[test]
fn auto_decodes_with_the_subgroup_kernel_where_it_runs() {
    let gpu = common::gpu();
    // A DIFF V2 group of 4: one workgroup per group, so a short cache is written directly.
    let cfg = cfg(Mode::Diff, 4, 2, 64, KvDtype::F16);
    let Some(mut op) = subgroup_op(&gpu, cfg) else {
        return;
    };
    // CPU adapters decode with the serial kernel; this is what every other adapter does.
    let tuning = attention::DecodeTuning {
        serial: false,
        ..attention::DecodeTuning::for_layer(&gpu.info, 64)
    };
    op.set_decode_tuning(&gpu, tuning).unwrap();
    let shape = attention::subgroup_decode_shape(&gpu, &cfg, &tuning).unwrap();
    for seq in [1u32, 300, 5000] {
        let c = call(1, seq, true, seq - 1);
        let plan = op.plan(&c, Kernel::Auto).unwrap();
        assert_eq!(plan.kernel, Kernel::DecodeSubgroup, "S={seq}");
        assert_eq!(plan.chunk_len, shape.block_keys(), "S={seq}");
        assert_eq!(plan.heads_per_wg, shape.rows, "S={seq}");
        assert_eq!(plan.direct, seq <= tuning.direct_max_keys, "S={seq}");
        assert_eq!(plan.n_chunks > 1, seq > tuning.direct_max_keys, "S={seq}");
        auto_matches_reference(
            &gpu,
            &mut op,
            c,
            common::fresh_seed("auto subgroup") + seq as u64,
        );
    }
}

/// An op for the layer where the adapter runs the subgroup decode kernel for it; `None` (the
/// test skipped, said on stderr) elsewhere.
fn subgroup_op(gpu: &diffattn::Gpu, cfg: AttentionConfig) -> Option<attention::AttentionOp> {
    let op = attention::AttentionOp::new(gpu, cfg).unwrap();
    if op.paths().contains(&Kernel::DecodeSubgroup) {
        Some(op)
    } else {
        eprintln!("skipped: no subgroup decode kernel on {}", gpu.describe());
        None
    }
}

/// Runs one call on `op` with `Auto` on fresh inputs and checks it against float64.
fn auto_matches_reference(
    gpu: &diffattn::Gpu,
    op: &mut attention::AttentionOp,
    c: attention::AttentionCall,
    seed: u64,
) {
    let cfg = *op.config();
    let case = Case {
        cfg,
        call: c,
        kernel: Kernel::Auto,
        q_scale: 1.0,
        seed,
        target_workgroups: None,
        blocks: None,
        subgroup: None,
    };
    let (q, k, v, lam) = case.inputs();
    let x = HostInputs {
        q: &q,
        k: &k,
        v: &v,
        lam: &lam,
    };
    let got = pollster::block_on(attention::attention_with(gpu, op, &c, &x, Kernel::Auto)).unwrap();
    let want = reference::attention(&cfg, &c, &x).unwrap();
    let (_, rel) = reference::compare(&got, &want);
    assert!(rel < case.tolerance(), "S={}: rel L2 {rel:.3e}", c.seq_len);
}

/// Where the subgroup decode kernel has a second pipeline for short caches (another workgroup
/// size), each call takes the pipeline its cache length asks for, its plan follows that
/// pipeline's layout, and both match the float64 reference on the same op.
#[test]
fn short_and_long_caches_take_their_own_subgroup_pipelines() {
    let gpu = common::gpu();
    let cfg = cfg(Mode::Diff, 8, 2, 64, KvDtype::F16);
    let Some(mut op) = subgroup_op(&gpu, cfg) else {
        return;
    };
    let tuning = attention::DecodeTuning {
        serial: false,
        subgroup_workgroup_size: 64,
        subgroup_short_workgroup_size: 128,
        subgroup_short_max_keys: 1000,
        ..attention::DecodeTuning::for_layer(&gpu.info, 64)
    };
    op.set_decode_tuning(&gpu, tuning).unwrap();
    let long = attention::subgroup_decode_shape(&gpu, &cfg, &tuning).unwrap();
    let short_tuning = attention::DecodeTuning {
        subgroup_workgroup_size: 128,
        ..tuning
    };
    let short = attention::subgroup_decode_shape(&gpu, &cfg, &short_tuning).unwrap();
    assert_ne!(long.block_keys(), short.block_keys());
    for seq in [300u32, 1000, 1001, 4000, 20] {
        let c = call(1, seq, true, seq - 1);
        let plan = op.plan(&c, Kernel::Auto).unwrap();
        assert_eq!(plan.kernel, Kernel::DecodeSubgroup, "S={seq}");
        assert_eq!(plan.short_cache, seq <= 1000, "S={seq}");
        let shape = if plan.short_cache { short } else { long };
        assert_eq!(plan.chunk_len, shape.block_keys(), "S={seq}");
        let seed = common::fresh_seed("short subgroup pipeline") + seq as u64;
        auto_matches_reference(&gpu, &mut op, c, seed);
    }
}
