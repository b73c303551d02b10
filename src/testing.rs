//! Seeded random inputs and the conformance suite that `diffattn verify` and the tests run.

use crate::attention::{self, AttentionCall, AttentionConfig, HostInputs, Kernel, KvDtype, Mode};
use crate::error::Result;
use crate::gpu::Gpu;
use crate::model::WeightDtype;
use crate::reference;

pub use crate::util::Rng;

/// One conformance case.
#[derive(Clone, Debug)]
pub struct Case {
    pub cfg: AttentionConfig,
    pub call: AttentionCall,
    pub kernel: Kernel,
    /// Query scale factor; 1e3 makes logits large enough to overflow a softmax without max subtraction.
    pub q_scale: f32,
    pub seed: u64,
    /// Workgroups the decode split count aims for, where a case must force long chunks (several
    /// sub-chunks per workgroup); `None` takes the adapter's default.
    pub target_workgroups: Option<u32>,
    /// 16-key tiles per subgroup step of the cooperative decode kernel; `None` takes the default.
    pub blocks: Option<u32>,
    /// The subgroup decode kernel's (most rows per workgroup, steps its loads run ahead, invocations per
    /// workgroup or 0 for the default); `None` takes the defaults.
    pub subgroup: Option<(u32, u32, u32)>,
}

impl Case {
    pub fn name(&self) -> String {
        let c = &self.cfg;
        let mode = match c.mode {
            Mode::Diff => "diff",
            Mode::Standard => "std",
        };
        let kv = match c.kv_dtype {
            KvDtype::F32 => "f32",
            KvDtype::F16 => "f16",
        };
        let mask = if self.call.causal {
            format!(" causal@{}", self.call.past_len)
        } else {
            String::new()
        };
        let big = if self.q_scale != 1.0 {
            format!(" q*{}", self.q_scale)
        } else {
            String::new()
        };
        let mut split = match self.target_workgroups {
            Some(t) => format!(" wg~{t}"),
            None => String::new(),
        };
        if let Some(b) = self.blocks {
            split += &format!(" blocks={b}");
        }
        if let Some((rows, ahead, wg)) = self.subgroup {
            split += &format!(" rows<={rows}");
            split += &format!(" ahead={ahead}");
            if wg > 0 {
                split += &format!(" wg={wg}");
            }
        }
        format!(
            "{mode} h={} kv={} d={} N={} S={} {kv} {}{mask}{big}{split}",
            c.heads,
            c.kv_heads,
            c.head_dim,
            self.call.n_queries,
            self.call.seq_len,
            self.kernel.name()
        )
    }

    /// Relative L2 tolerance against float64: f32 K/V reach ~1e-6, f16 storage ~1e-3.
    ///
    /// With logits in the hundreds or more, rounding the logits themselves to f32 (about 6e-8 of
    /// their size) already moves the probabilities by that much relative to float64, whatever the
    /// kernel does; so the bound grows with the query scale beyond 100.
    pub fn tolerance(&self) -> f64 {
        let base = match self.cfg.kv_dtype {
            KvDtype::F32 => 1e-5,
            KvDtype::F16 => 3e-3,
        };
        base * (self.q_scale as f64 / 100.0).max(1.0)
    }

    /// Random inputs for this case (q, k, v, lam), from its seed.
    pub fn inputs(&self) -> (Vec<f32>, Vec<f32>, Vec<f32>, Vec<f32>) {
        let sh = attention::shapes(&self.cfg, &self.call);
        let mut rng = Rng::new(self.seed);
        let q = rng.normals(sh.q.0, self.q_scale);
        let k = rng.normals(sh.kv.0, 1.0);
        let v = rng.normals(sh.kv.0, 1.0);
        let lam = rng.normals(sh.lam.0, 2.0);
        (q, k, v, lam)
    }
}

/// The result of running one case.
#[derive(Clone, Debug, serde::Serialize)]
pub struct CaseResult {
    pub case: String,
    /// The kernel that ran (what `auto` resolved to on this adapter).
    pub path: String,
    pub max_abs: f64,
    pub rel_l2: f64,
    pub tolerance: f64,
    pub pass: bool,
}

/// Runs one case on the GPU and compares it with the float64 reference.
pub async fn run_case(gpu: &Gpu, case: &Case) -> Result<CaseResult> {
    let (q, k, v, lam) = case.inputs();
    let x = HostInputs {
        q: &q,
        k: &k,
        v: &v,
        lam: &lam,
    };
    let mut op = attention::AttentionOp::new(gpu, case.cfg)?;
    if case.target_workgroups.is_some() || case.blocks.is_some() || case.subgroup.is_some() {
        let default = attention::DecodeTuning::for_layer(&gpu.info, case.cfg.head_dim);
        let (rows, ahead, wg) = case.subgroup.unwrap_or((default.rows, default.ahead, 0));
        let tuning = attention::DecodeTuning {
            rows,
            ahead,
            subgroup_workgroup_size: if wg > 0 {
                wg
            } else {
                default.subgroup_workgroup_size
            },
            // A case that names a workgroup size runs it at every cache length.
            subgroup_short_workgroup_size: if wg > 0 {
                0
            } else {
                default.subgroup_short_workgroup_size
            },
            target_workgroups: case.target_workgroups.unwrap_or(default.target_workgroups),
            ..default.with_shape(
                default.workgroup_size,
                case.blocks.unwrap_or(default.blocks),
            )
        };
        op.set_decode_tuning(gpu, tuning)?;
    }
    let path = op.plan(&case.call, case.kernel)?.kernel.name().to_string();
    let got = attention::attention_with(gpu, &mut op, &case.call, &x, case.kernel).await?;
    let want = reference::attention(&case.cfg, &case.call, &x)?;
    let (max_abs, mut rel_l2) = reference::compare(&got, &want);
    if case.cfg.mode == Mode::Diff {
        // o_2i - sigmoid(lam) o_2i+1 can cancel to almost nothing (one key and a large lambda
        // logit: v (1 - sigmoid(lam))), while each term still carries its own f32 rounding: the
        // error is measured against the size of the terms, o_2i (the reference with lambda
        // switched off), where that is the larger.
        let off = vec![-100.0f32; lam.len()];
        let terms = reference::attention(&case.cfg, &case.call, &HostInputs { lam: &off, ..x })?;
        let norm = |v: &[f64]| v.iter().map(|x| x * x).sum::<f64>().sqrt();
        let (want_norm, terms_norm) = (norm(&want), norm(&terms));
        if terms_norm > want_norm && want_norm > 0.0 && rel_l2.is_finite() {
            rel_l2 *= want_norm / terms_norm;
        }
    }
    let tolerance = case.tolerance();
    Ok(CaseResult {
        case: case.name(),
        path,
        max_abs,
        rel_l2,
        tolerance,
        pass: rel_l2 <= tolerance,
    })
}

fn case(
    mode: Mode,
    (heads, kv_heads, head_dim): (u32, u32, u32),
    (n_queries, seq_len): (u32, u32),
    causal: bool,
    kv_dtype: KvDtype,
    kernel: Kernel,
) -> Case {
    let past_len = if causal {
        seq_len.saturating_sub(n_queries)
    } else {
        0
    };
    Case {
        cfg: AttentionConfig {
            heads,
            kv_heads,
            head_dim,
            mode,
            kv_dtype,
            scale: None,
        },
        call: AttentionCall {
            n_queries,
            seq_len,
            causal,
            past_len,
        },
        kernel,
        q_scale: 1.0,
        seed: 0,
        target_workgroups: None,
        blocks: None,
        subgroup: None,
    }
}

/// The conformance list for one adapter: [`conformance_cases`] plus cases for each fast path the
/// adapter has, so that `diffattn verify` checks every kernel it can run.
pub fn conformance_cases_for(gpu: &Gpu) -> Vec<Case> {
    let mut cases = conformance_cases();
    let probe = AttentionConfig {
        kv_dtype: KvDtype::F16,
        ..AttentionConfig::new(Mode::Diff, 4, 2, 64)
    };
    let tuning = attention::DecodeTuning::for_layer(&gpu.info, 64);
    if attention::coop_decode_unavailable(gpu, &probe, &tuning).is_none() {
        cases.extend(coop_decode_cases());
        // The other block shape than the default, on the same cases.
        let other = 3 - tuning.blocks;
        cases.extend(coop_decode_cases().into_iter().map(|mut c| {
            c.blocks = Some(other);
            c
        }));
    }
    if attention::coop_prefill_unavailable(gpu, &probe).is_none() {
        cases.extend(coop_prefill_cases());
    }
    if attention::subgroup_decode_shape(gpu, &probe, &tuning).is_ok() {
        // Layers the kernel does not take (d=96, or d=256 on narrow subgroups) are `Auto`'s to
        // route elsewhere.
        cases.extend(subgroup_decode_cases().into_iter().filter(|c| {
            let t = attention::DecodeTuning::for_layer(&gpu.info, c.cfg.head_dim);
            attention::subgroup_decode_shape(gpu, &c.cfg, &t).is_ok()
        }));
    }
    cases
}

/// Cases for the subgroup decode kernel (f16 K/V): the cooperative kernel's cases (head dims,
/// groups of 1 to 32 query heads, partial blocks, several sub-chunks per workgroup, several query
/// rows, large logits) plus head dim 256 and a single-chunk DIFF V2 call.
pub fn subgroup_decode_cases() -> Vec<Case> {
    use KvDtype::F16;
    use Mode::{Diff, Standard};
    let k = Kernel::DecodeSubgroup;
    let mut cases: Vec<Case> = coop_decode_cases()
        .into_iter()
        .map(|c| Case { kernel: k, ..c })
        .collect();
    cases.push(case(Diff, (4, 2, 256), (1, 300), true, F16, k));
    // Single chunks written directly in DIFF V2 mode, over several merge rounds at d=128 and 256.
    cases.push(case(Diff, (4, 2, 128), (1, 100), true, F16, k));
    cases.push(case(Diff, (4, 2, 256), (1, 100), true, F16, k));
    cases.push(case(Standard, (8, 2, 256), (2, 100), true, F16, k));
    let mut one = case(Diff, (8, 2, 64), (1, 3000), true, F16, k);
    one.target_workgroups = Some(1);
    cases.push(one);
    // The other tunings: no loads ahead, eight rows, two rows, loads two steps ahead; 64 and
    // 256 invocations.
    let variants: Vec<Case> = cases
        .iter()
        .step_by(3)
        .flat_map(|c| {
            [(4, 0, 0), (8, 1, 64), (2, 1, 256), (4, 2, 0)].map(|t| Case {
                subgroup: Some(t),
                ..c.clone()
            })
        })
        .collect();
    cases.extend(variants);
    for (i, c) in cases.iter_mut().enumerate() {
        c.seed = 0x5B6D_0000 + i as u64;
    }
    cases
}

/// Cases for the cooperative-matrix prefill kernel (f16 K/V): partial 16-row blocks and 64-key
/// tiles, causal from 0 and after a cached prefix (chunked prefill), no mask, GQA groups, both
/// modes, large logits.
pub fn coop_prefill_cases() -> Vec<Case> {
    use KvDtype::F16;
    use Mode::{Diff, Standard};
    let k = Kernel::FlashCoop;
    let mut cases = vec![
        case(Diff, (4, 2, 64), (1, 1), true, F16, k),
        case(Diff, (4, 2, 64), (17, 17), true, F16, k),
        case(Diff, (4, 2, 64), (64, 64), true, F16, k),
        case(Diff, (6, 2, 64), (257, 257), true, F16, k),
        case(Standard, (6, 2, 64), (100, 300), true, F16, k),
        case(Diff, (8, 2, 128), (130, 130), true, F16, k),
        case(Standard, (8, 8, 128), (77, 333), false, F16, k),
        case(Diff, (4, 1, 32), (48, 1000), true, F16, k),
        case(Diff, (4, 2, 96), (33, 95), true, F16, k),
    ];
    for q_scale in [30.0, 1e3] {
        let mut c = case(Diff, (4, 2, 64), (40, 200), true, F16, k);
        c.q_scale = q_scale;
        cases.push(c);
    }
    for (i, c) in cases.iter_mut().enumerate() {
        c.seed = 0xF1A5_0000 + i as u64;
    }
    cases
}

/// Cases for the cooperative-matrix decode kernel (f16 K/V): head dims that are multiples of 16,
/// groups of 1 to 32 query heads (more than one workgroup per group past 16), partial 16-key tiles,
/// one and several sub-chunks per workgroup, several query rows, large logits.
pub fn coop_decode_cases() -> Vec<Case> {
    use KvDtype::F16;
    use Mode::{Diff, Standard};
    let k = Kernel::DecodeCoop;
    let mut cases = vec![
        case(Diff, (4, 2, 64), (1, 1), true, F16, k),
        case(Diff, (4, 2, 64), (1, 15), true, F16, k),
        case(Diff, (4, 2, 64), (1, 16), true, F16, k),
        case(Diff, (4, 2, 64), (1, 17), true, F16, k),
        case(Diff, (6, 2, 64), (1, 1000), true, F16, k),
        case(Standard, (6, 2, 64), (1, 1000), true, F16, k),
        case(Diff, (32, 8, 128), (1, 4099), true, F16, k),
        case(Standard, (32, 8, 128), (1, 4099), true, F16, k),
        case(Diff, (16, 4, 32), (3, 777), true, F16, k),
        case(Diff, (4, 2, 96), (4, 513), true, F16, k),
        case(Diff, (3, 3, 64), (1, 100), true, F16, k),
        case(Standard, (3, 1, 32), (1, 250), true, F16, k),
        case(Diff, (8, 2, 128), (4, 200), true, F16, k),
        case(Diff, (16, 1, 64), (1, 700), true, F16, k),
        case(Standard, (4, 4, 64), (2, 1500), false, F16, k),
        case(Diff, (8, 2, 128), (1, 8192), true, F16, k),
    ];
    let mut long = case(Diff, (8, 2, 128), (1, 8191), true, F16, k);
    long.target_workgroups = Some(4);
    cases.push(long);
    let mut long = case(Standard, (4, 1, 64), (3, 5000), true, F16, k);
    long.target_workgroups = Some(1);
    cases.push(long);
    for q_scale in [30.0, 1e3] {
        let mut c = case(Diff, (4, 2, 64), (3, 1024), true, F16, k);
        c.q_scale = q_scale;
        cases.push(c);
    }
    for (i, c) in cases.iter_mut().enumerate() {
        c.seed = 0xC00B_0000 + i as u64;
    }
    cases
}

/// The fixed conformance list: both modes, head dims 32/64/96/128, GQA ratios 1/2/4,
/// N in {1, 3, 64, 257}, S up to 8192, causal offsets, f32 and f16 K/V, large logits.
pub fn conformance_cases() -> Vec<Case> {
    use KvDtype::{F16, F32};
    use Mode::{Diff, Standard};
    let mut cases = Vec::new();
    // The grid: every head dim x mode x GQA ratio, with sizes and masks rotating through it.
    let sizes = [(1, 1), (3, 77), (64, 200), (257, 300), (1, 1000), (3, 515)];
    let mut i = 0;
    for d in [32, 64, 96, 128] {
        for mode in [Diff, Standard] {
            for ratio in [1, 2, 4] {
                let kv_heads = if i % 2 == 0 { 1 } else { 2 };
                let (n, s) = sizes[i % sizes.len()];
                cases.push(case(
                    mode,
                    (ratio * kv_heads, kv_heads, d),
                    (n, s),
                    i % 3 != 1,
                    F32,
                    Kernel::Auto,
                ));
                i += 1;
            }
        }
    }
    // Long caches, decode and a few-token chunk, f32 and f16.
    for (mode, d, dt) in [
        (Diff, 64, F32),
        (Diff, 128, F16),
        (Standard, 128, F32),
        (Diff, 64, F16),
    ] {
        cases.push(case(mode, (4, 2, d), (1, 8192), true, dt, Kernel::Auto));
    }
    cases.push(case(Diff, (8, 2, 128), (3, 8192), true, F32, Kernel::Auto));
    cases.push(case(Diff, (4, 1, 64), (64, 4096), true, F32, Kernel::Auto));
    // f16 K/V across shapes and both kernels.
    for (mode, d, (n, s), causal, kernel) in [
        (Diff, 32, (64, 64), true, Kernel::Flash),
        (Diff, 96, (257, 257), true, Kernel::Flash),
        (Standard, 64, (3, 999), false, Kernel::Decode),
        (Diff, 128, (1, 2049), true, Kernel::Decode),
        (Standard, 64, (3, 999), false, Kernel::DecodeSerial),
        (Diff, 128, (1, 2049), true, Kernel::DecodeSerial),
    ] {
        cases.push(case(mode, (4, 2, d), (n, s), causal, F16, kernel));
    }
    // Each kernel outside its usual range: decode for many rows, flash for one.
    cases.push(case(Diff, (2, 1, 64), (64, 300), true, F32, Kernel::Decode));
    // Both portable decode kernels on every adapter, whichever `Auto` picks there: the model's
    // group of 6, a cache shorter than one chunk, and one past a chunk boundary.
    for (kernel, s) in [
        (Kernel::Decode, 37),
        (Kernel::DecodeSerial, 37),
        (Kernel::Decode, 129),
        (Kernel::DecodeSerial, 129),
    ] {
        cases.push(case(Diff, (6, 2, 64), (1, s), true, F32, kernel));
    }
    cases.push(case(
        Standard,
        (8, 2, 32),
        (4, 700),
        true,
        F32,
        Kernel::DecodeSerial,
    ));
    cases.push(case(Diff, (2, 2, 64), (1, 300), true, F32, Kernel::Flash));
    cases.push(case(
        Standard,
        (6, 2, 32),
        (3, 100),
        false,
        F32,
        Kernel::Flash,
    ));
    // A model-like shape: h = 6, h_kv = 2, so 12 query heads in groups of 6 (not a power of two).
    cases.push(case(Diff, (6, 2, 64), (257, 257), true, F32, Kernel::Auto));
    cases.push(case(Diff, (6, 2, 64), (1, 600), true, F32, Kernel::Auto));
    // Many heads per KV head: more than one decode workgroup per group.
    cases.push(case(Diff, (16, 1, 64), (1, 700), true, F32, Kernel::Auto));
    // Large logits: the online softmax must subtract the running max. q * 30 puts the largest
    // logits near 100, past the 88.7 where exp overflows f32, at the strict tolerance; q * 1e3
    // gives logits in the thousands.
    for (kernel, q_scale) in [
        (Kernel::Decode, 30.0),
        (Kernel::Flash, 30.0),
        (Kernel::Decode, 1e3),
        (Kernel::Flash, 1e3),
        (Kernel::DecodeSerial, 30.0),
        (Kernel::DecodeSerial, 1e3),
    ] {
        let mut c = case(Diff, (4, 2, 64), (3, 1024), true, F32, kernel);
        c.q_scale = q_scale;
        cases.push(c);
    }
    for (i, c) in cases.iter_mut().enumerate() {
        c.seed = 0x5EED_0000 + i as u64;
    }
    cases
}

/// One check of a product kernel (`y = x W^T (+ y)`) against float64.
#[derive(Clone, Debug)]
pub struct ProductCase {
    /// Token rows, input width (a multiple of 8, and of the block size for block types), outputs.
    pub rows: u32,
    pub k: u32,
    pub n: u32,
    /// Add the product to y (which starts random) rather than overwrite it (poisoned).
    pub accumulate: bool,
    /// The kernel: "gemm_coop" (f16 weights only), or matmul.wgsl's "matvec", "matvec_serial",
    /// "gemm" or "gemm_direct".
    pub kernel: &'static str,
    /// Storage type of W: F16, or a ggml block type (random blocks with finite scales).
    pub weights: WeightDtype,
    /// Fold an RMSNorm of x (random weights, eps 1e-5) into the product: the one-token kernels
    /// ("matvec", "matvec_serial") only.
    pub norm: bool,
    /// W's rows are gate/up pairs and the kernel writes their SwiGLU (n / 2 outputs per row; the
    /// one-token kernels only, n even, no accumulation).
    pub swiglu: bool,
    /// y's rows are wider than the product's outputs ([`COLUMN_PAD`] more columns) and the
    /// product writes columns [3, 3 + outputs) of them (`y_stride`, `y_offset`: how a fused
    /// product of mixed weight types writes its share); the other columns must keep their values.
    pub columns: bool,
    pub seed: u64,
}

/// Extra columns of y in a [`ProductCase::columns`] case; the product writes from column 3.
pub const COLUMN_PAD: u32 = 7;

impl ProductCase {
    /// The case's name in `diffattn verify`'s table.
    pub fn name(&self) -> String {
        let acc = if self.accumulate { " +y" } else { "" };
        let norm = if self.norm { " norm" } else { "" };
        let swiglu = if self.swiglu { " swiglu" } else { "" };
        let cols = if self.columns { " cols" } else { "" };
        format!(
            "product rows={} k={} n={} {:?} W{acc}{norm}{swiglu}{cols}",
            self.rows, self.k, self.n, self.weights
        )
    }

    /// Relative L2 tolerance: the tensor-core kernel rounds activations to f16 (~5e-4 relative
    /// per element); the portable kernels widen or dequantize the weights exactly (or with one
    /// f32 rounding per weight: Q4_1's `q * d + m`, Q4_K's `- dmin * m`, Q6_K's third factor)
    /// and accumulate in f32.
    pub fn tolerance(&self) -> f64 {
        if self.kernel == "gemm_coop" {
            3e-3
        } else {
            1e-5
        }
    }
}

/// Product cases for every many-row kernel the adapter runs: partial blocks in every dimension, a
/// K that is not a multiple of the staged step, accumulation, the shipped and SmolLM2 shapes.
pub fn product_cases_for(gpu: &Gpu) -> Vec<ProductCase> {
    let mut kernels = vec!["gemm", "gemm_direct"];
    if crate::model::plan::coop_gemm_unavailable(gpu).is_none() {
        kernels.insert(0, "gemm_coop");
    }
    let shapes = [
        (2, 8, 5, false),
        (77, 40, 100, true),
        (64, 64, 64, false),
        (200, 384, 1030, false),
        (130, 1536, 576, true),
        (128, 576, 3072, false),
    ];
    let mut cases = vec![];
    for kernel in kernels {
        for (i, &(rows, k, n, accumulate)) in shapes.iter().enumerate() {
            cases.push(ProductCase {
                rows,
                k,
                n,
                accumulate,
                kernel,
                weights: WeightDtype::F16,
                norm: false,
                swiglu: false,
                columns: false,
                seed: 0x6E33_0000 + i as u64,
            });
        }
    }
    cases.extend(quantized_product_cases(0x9B10_0000));
    cases.extend(norm_product_cases(0x4E0F_0000));
    cases.extend(column_product_cases(gpu, 0xC015_0000));
    cases
}

/// Every product kernel writing a column range of wider rows: f16 and block weights,
/// overwriting and accumulating, one and many token rows.
pub fn column_product_cases(gpu: &Gpu, seed: u64) -> Vec<ProductCase> {
    let mut kernels = vec!["matvec", "matvec_serial", "gemm", "gemm_direct"];
    if crate::model::plan::coop_gemm_unavailable(gpu).is_none() {
        kernels.push("gemm_coop");
    }
    let mut cases = vec![];
    for kernel in kernels {
        let one = kernel.starts_with("matvec");
        // (k, n, accumulate, weights, norm)
        let shapes = [
            (64, 40, false, WeightDtype::F16, one),
            (256, 19, true, WeightDtype::F16, false),
            (352, 33, false, WeightDtype::Q4_0, false),
            (512, 70, true, WeightDtype::Q8_0, one),
        ];
        for (i, &(k, n, accumulate, weights, norm)) in shapes.iter().enumerate() {
            if kernel == "gemm_coop" && weights != WeightDtype::F16 {
                continue;
            }
            cases.push(ProductCase {
                rows: if one {
                    1 + i as u32 % 2
                } else {
                    13 + 40 * i as u32
                },
                k,
                n,
                accumulate,
                kernel,
                weights,
                norm,
                swiglu: false,
                columns: true,
                seed: seed ^ (i as u64 * 16 + kernel.len() as u64),
            });
        }
    }
    cases
}

/// The one-token kernels with an RMSNorm folded in (what a decode step runs), and with SwiGLU
/// applied to gate/up row pairs: f16 and block weights, several token rows (each normalised on
/// its own), accumulation, the shipped and SmolLM2 widths.
pub fn norm_product_cases(seed: u64) -> Vec<ProductCase> {
    let mut cases = vec![];
    // (rows, k, n, accumulate, weights, norm, swiglu)
    let shapes = [
        (1, 512, 1543, false, WeightDtype::F16, true, false),
        (3, 576, 100, true, WeightDtype::F16, true, false),
        (1, 576, 3072, false, WeightDtype::Q4_1, true, false),
        (2, 768, 37, false, WeightDtype::Q4_K, true, false),
        (1, 576, 3072, false, WeightDtype::F16, true, true),
        (2, 512, 38, false, WeightDtype::Q4_0, true, true),
        (1, 256, 70, false, WeightDtype::F16, false, true),
    ];
    for kernel in ["matvec", "matvec_serial"] {
        for (i, &(rows, k, n, accumulate, weights, norm, swiglu)) in shapes.iter().enumerate() {
            cases.push(ProductCase {
                rows,
                k,
                n,
                accumulate,
                kernel,
                weights,
                norm,
                swiglu,
                columns: false,
                seed: seed ^ (i as u64 * 16 + kernel.len() as u64),
            });
        }
    }
    cases
}

/// Products of every ggml block type on each portable kernel (the tensor-core one takes f16
/// weights only): odd output counts, partial token blocks, accumulation, and for the 32-value
/// types a K that is not a multiple of 256. `seed` picks the blocks (tests pass a fresh one).
pub fn quantized_product_cases(seed: u64) -> Vec<ProductCase> {
    let mut cases = vec![];
    for (t, &weights) in WeightDtype::QUANTIZED.iter().enumerate() {
        let super_blocks = matches!(weights, WeightDtype::Q4_K | WeightDtype::Q6_K);
        // (rows, k, n, accumulate): K = 352 is 11 blocks of 32.
        let k_odd = if super_blocks { 768 } else { 352 };
        let shapes = [
            (1, k_odd, 37, false),
            (3, 256, 19, true),
            (19, k_odd, 101, false),
            (9, 512, 64, true),
        ];
        for kernel in ["matvec", "matvec_serial", "gemm", "gemm_direct"] {
            for (i, &(rows, k, n, accumulate)) in shapes.iter().enumerate() {
                cases.push(ProductCase {
                    rows,
                    k,
                    n,
                    accumulate,
                    kernel,
                    weights,
                    norm: false,
                    swiglu: false,
                    columns: false,
                    seed: seed ^ (t as u64 * 64 + i as u64 * 4 + kernel.len() as u64),
                });
            }
        }
    }
    cases
}

/// `n` values of a ggml block type as random block bytes: random integer fields, and f16
/// scales drawn from +-`scale` (random bits would hold NaNs and infinities). `n` must be whole
/// blocks.
pub fn random_blocks(rng: &mut Rng, dtype: WeightDtype, n: usize, scale: f32) -> Vec<u8> {
    let ty = dtype.ggml();
    let bytes = dtype.bytes_for(n).expect("whole blocks");
    let mut out: Vec<u8> = (0..bytes).map(|_| (rng.next_u64() >> 56) as u8).collect();
    let scales: &[usize] = match dtype {
        WeightDtype::Q4_1 | WeightDtype::Q4_K => &[0, 2],
        WeightDtype::Q6_K => &[208],
        _ => &[0],
    };
    for blk in out.chunks_exact_mut(ty.block_bytes() as usize) {
        for &o in scales {
            let v = half::f16::from_f32((rng.uniform() as f32 * 2.0 - 1.0) * scale);
            blk[o..o + 2].copy_from_slice(&v.to_le_bytes());
        }
    }
    out
}

/// Runs one product case on the GPU (the output poisoned first unless it accumulates) and
/// compares it with float64 on the same weights: f16-rounded, or the blocks dequantized by
/// [`reference::dequant`].
pub async fn run_product_case(gpu: &Gpu, case: &ProductCase) -> Result<CaseResult> {
    use crate::gpu::{Const, ShaderSpec, UniformArena};
    let (rows, k, n) = (case.rows as usize, case.k as usize, case.n as usize);
    let mut rng = Rng::new(case.seed);
    let x = rng.normals(rows * k, 1.0);
    let wbytes: Vec<u8> = if case.weights.is_quantized() {
        // Scales near 1 / (q range * sqrt(k)) keep outputs near unit size.
        random_blocks(&mut rng, case.weights, n * k, 0.1)
    } else {
        let w: Vec<half::f16> = rng
            .normals(n * k, 0.1)
            .into_iter()
            .map(half::f16::from_f32)
            .collect();
        bytemuck::cast_slice(&w).to_vec()
    };
    let w = reference::dequant::dequantize(case.weights.ggml(), &wbytes, (n * k) as u64)
        .map_err(|e| crate::error::Error::config(format!("product case weights: {e}")))?;
    let out_n = if case.swiglu { n / 2 } else { n };
    // y's row layout: the outputs at [offset, offset + out_n) of rows `stride` wide.
    let (stride, offset) = if case.columns {
        (out_n + COLUMN_PAD as usize, 3)
    } else {
        (out_n, 0)
    };
    let mut y0 = rng.normals(rows * stride, 1.0);
    if case.columns && !case.accumulate {
        // Poison what the product must write; the columns around it keep their random values.
        for t in 0..rows {
            y0[t * stride + offset..][..out_n].fill(f32::NAN);
        }
    }
    let xb = gpu.storage_init("product x", bytemuck::cast_slice(&x))?;
    let wb = gpu.storage_init("product W", &wbytes)?;
    let yb = gpu.storage_init("product y", bytemuck::cast_slice(&y0))?;
    if !case.accumulate && !case.columns {
        gpu.poison(&yb);
    }
    let mut arena = UniformArena::new(gpu, "product step", 1);
    arena.set(0, &[case.rows, 0u32, 0, 0]);
    arena.upload(gpu, 1);
    let eps = 1e-5f32;
    let g = rng.normals(k, 1.0);
    let gb = gpu.storage_init("product norm weights", bytemuck::cast_slice(&g))?;
    let params = gpu.uniform(
        "product params",
        &crate::model::plan::MatmulParams {
            k: case.k,
            n: case.n,
            accumulate: case.accumulate as u32,
            norm: case.norm as u32,
            eps,
            swiglu: case.swiglu as u32,
            y_stride: stride as u32,
            y_offset: offset as u32,
            ..Default::default()
        },
    );
    let spec = match case.kernel {
        "gemm_coop" => ShaderSpec::new("gemm_coop"),
        entry => ShaderSpec::new("matmul")
            .with("WEIGHT_DTYPE", Const::U32(case.weights.shader_code()))
            .with("TB", Const::U32(8))
            .entry(entry),
    };
    let pipeline = gpu.pipeline(&spec)?;
    let mut buffers = vec![arena.buffer(), &params, &xb, &wb, &yb];
    if case.kernel != "gemm_coop" {
        buffers.push(&gb);
    }
    let bind = gpu.bind(&pipeline, &buffers);
    // matmul.wgsl's `matvec` and `gemm` run 4 output rows per workgroup (16 lanes each), `gemm`
    // 8 tokens per layer of the grid; `gemm_direct` one 4x4 block per invocation; gemm_coop
    // 64 x 64 blocks.
    let groups = match case.kernel {
        "gemm_coop" => [case.n.div_ceil(64), case.rows.div_ceil(64), 1],
        "gemm" => [case.n.div_ceil(4), 1, case.rows.div_ceil(8)],
        "matvec" => [case.n.div_ceil(4), 1, 1],
        // 64 invocations of 4 rows (SERIAL_ROWS's default) per workgroup.
        "matvec_serial" => [case.n.div_ceil(256), 1, 1],
        _ => [
            (case.rows.div_ceil(4) * case.n.div_ceil(4)).div_ceil(64),
            1,
            1,
        ],
    };
    let mut enc = gpu.device.create_command_encoder(&Default::default());
    {
        let mut pass = enc.begin_compute_pass(&Default::default());
        pass.set_pipeline(&pipeline);
        pass.set_bind_group(0, &bind, &[0]);
        pass.dispatch_workgroups(groups[0], groups[1], groups[2]);
    }
    gpu.queue.submit([enc.finish()]);
    let all = gpu.read_f32(&yb, rows * stride).await?;
    gpu.take_error("product case")?;
    let mut got = Vec::with_capacity(rows * out_n);
    let mut outside_kept = true;
    for t in 0..rows {
        let row = &all[t * stride..][..stride];
        got.extend_from_slice(&row[offset..offset + out_n]);
        let around = (0..stride).filter(|c| !(offset..offset + out_n).contains(c));
        outside_kept &= around
            .into_iter()
            .all(|c| row[c].to_bits() == y0[t * stride + c].to_bits());
    }
    let mut want = vec![0f64; rows * out_n];
    for t in 0..rows {
        let row: Vec<f64> = x[t * k..][..k].iter().map(|&v| v as f64).collect();
        let row = if case.norm {
            let ms = row.iter().map(|v| v * v).sum::<f64>() / k as f64;
            let inv = 1.0 / (ms + eps as f64).sqrt();
            row.iter()
                .zip(&g)
                .map(|(v, &gi)| v * inv * gi as f64)
                .collect()
        } else {
            row
        };
        let prod: Vec<f64> = (0..n)
            .map(|o| (0..k).map(|i| row[i] * w[o * k + i]).sum())
            .collect();
        for o in 0..out_n {
            want[t * out_n + o] = if case.swiglu {
                let (g, u) = (prod[2 * o], prod[2 * o + 1]);
                g / (1.0 + (-g).exp()) * u
            } else if case.accumulate {
                prod[o] + y0[t * stride + offset + o] as f64
            } else {
                prod[o]
            };
        }
    }
    let (max_abs, rel_l2) = reference::compare(&got, &want);
    let tolerance = case.tolerance();
    Ok(CaseResult {
        case: case.name(),
        path: case.kernel.to_string(),
        max_abs,
        rel_l2,
        tolerance,
        // A write outside the product's columns fails the case whatever its error.
        pass: rel_l2 <= tolerance && outside_kept,
    })
}
