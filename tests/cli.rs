//! The `diffattn` command line: adapters, verify, attn (including its input errors) and bench.

mod common;

use diffattn::attention::{self, AttentionCall, AttentionConfig, HostInputs, KvDtype, Mode};
use diffattn::reference;
use diffattn::testing::Rng;
use safetensors::Dtype;
use safetensors::tensor::TensorView;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn diffattn(args: &[&str]) -> Output {
    let dir = std::env::temp_dir().join("diffattn-xdg");
    std::fs::create_dir_all(&dir).unwrap();
    Command::new(env!("CARGO_BIN_EXE_diffattn"))
        .args(args)
        .env("XDG_RUNTIME_DIR", &dir)
        .output()
        .expect("run diffattn")
}

/// Runs diffattn, which must succeed, and parses each line it prints as JSON.
fn json_rows(args: &[&str]) -> Vec<serde_json::Value> {
    let out = diffattn(args);
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn tmp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("diffattn-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

fn write_tensors(path: &Path, tensors: &[(&str, Vec<usize>, &[f32])]) {
    let views: Vec<(&str, TensorView)> = tensors
        .iter()
        .map(|(n, shape, data)| {
            (
                *n,
                TensorView::new(Dtype::F32, shape.clone(), bytemuck::cast_slice(data)).unwrap(),
            )
        })
        .collect();
    safetensors::serialize_to_file(views, None, path).unwrap();
}

#[test]
fn adapters_lists_at_least_one_adapter_as_json() {
    let out = diffattn(&["adapters", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let first: serde_json::Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
    assert!(first["name"].as_str().is_some_and(|n| !n.is_empty()));
    assert!(first["max_storage_binding"].as_u64().unwrap() > 0);
}

#[test]
fn verify_json_passes_and_summarises() {
    let lines = json_rows(&["verify", "--json"]);
    let summary = lines.last().unwrap();
    let cases = summary["cases"].as_u64().unwrap();
    assert!(cases >= 40, "{summary}");
    assert_eq!(lines.len() as u64, cases + 1);
    assert_eq!(summary["failed"], 0);
    // The summary's worst error is the worst case's, and every case is within its own tolerance
    // (f16 K/V with large logits are allowed more than 3e-3).
    let per_case = &lines[..lines.len() - 1];
    let worst = per_case
        .iter()
        .map(|c| c["rel_l2"].as_f64().unwrap())
        .fold(0.0, f64::max);
    assert_eq!(summary["max_rel_l2"].as_f64().unwrap(), worst, "{summary}");
    assert!(
        per_case
            .iter()
            .all(|c| c["rel_l2"].as_f64().unwrap() <= c["tolerance"].as_f64().unwrap()),
        "{summary}"
    );
    assert!(per_case.iter().all(|c| c["pass"] == true));
    // Every case names the kernel that ran; the portable ones run everywhere.
    let paths: Vec<&str> = summary["paths"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap())
        .collect();
    assert!(
        paths.contains(&"decode") && paths.contains(&"flash"),
        "{paths:?}"
    );
    let adapters = String::from_utf8(diffattn(&["adapters"]).stdout).unwrap();
    if adapters.contains("decode-subgroup") {
        assert!(paths.contains(&"decode-subgroup"), "{paths:?}");
    }
    // The prompt-product kernels are checked too.
    assert!(
        paths.contains(&"gemm") && paths.contains(&"gemm_direct"),
        "{paths:?}"
    );
    assert!(
        lines[..lines.len() - 1]
            .iter()
            .all(|c| c["path"].is_string())
    );
}

/// A fresh Linux machine has no XDG_RUNTIME_DIR; the binary makes its own, so Mesa prints nothing.
#[test]
fn runs_cleanly_without_xdg_runtime_dir() {
    let out = Command::new(env!("CARGO_BIN_EXE_diffattn"))
        .arg("adapters")
        .env_remove("XDG_RUNTIME_DIR")
        .output()
        .unwrap();
    assert!(out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("XDG_RUNTIME_DIR"), "{err}");
}

#[test]
fn attn_refuses_positions_that_would_wrap() {
    let cfg = AttentionConfig {
        heads: 2,
        kv_heads: 1,
        head_dim: 32,
        mode: Mode::Diff,
        kv_dtype: KvDtype::F32,
        scale: None,
    };
    let call = AttentionCall {
        n_queries: 2,
        seq_len: 4,
        causal: true,
        past_len: 0,
    };
    let sh = attention::shapes(&cfg, &call);
    let mut rng = Rng::new(3);
    let (q, k, v, lam) = (
        rng.normals(sh.q.0, 1.0),
        rng.normals(sh.kv.0, 1.0),
        rng.normals(sh.kv.0, 1.0),
        rng.normals(sh.lam.0, 1.0),
    );
    let input = tmp("wrap-in.safetensors");
    let output = tmp("wrap-out.safetensors");
    let write = |v: &[f32]| {
        write_tensors(
            &input,
            &[
                ("q", vec![2, 4, 32], &q),
                ("k", vec![4, 1, 32], &k),
                ("v", vec![4, 1, 32], v),
                ("lam", vec![2, 2], &lam),
            ],
        )
    };
    write(&v);
    let _ = std::fs::remove_file(&output);
    let out = diffattn(&[
        "attn",
        "--in",
        input.to_str().unwrap(),
        "--out",
        output.to_str().unwrap(),
        "--causal",
        "--past-len",
        "4294967295",
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("past_len 4294967295"), "{err}");
    assert!(!output.exists(), "no output file may be written");

    // An infinite value makes the output non-finite: an error with exit code 2, not a file of NaN.
    let mut v_inf = v.clone();
    v_inf[5] = f32::INFINITY;
    write(&v_inf);
    let out = diffattn(&[
        "attn",
        "--in",
        input.to_str().unwrap(),
        "--out",
        output.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("the attention output holds a non-finite value"),
        "{err}"
    );
    assert!(!output.exists(), "no output file may be written");
}

#[test]
fn bench_bandwidth_reports_read_and_copy() {
    let out = diffattn(&[
        "bench",
        "bandwidth",
        "--mib",
        "16",
        "--repeats",
        "2",
        "--json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let row: serde_json::Value =
        serde_json::from_str(String::from_utf8(out.stdout).unwrap().trim()).unwrap();
    assert_eq!(row["bench"], "bandwidth");
    assert_eq!(row["bytes"], 16u64 << 20);
    assert!(row["read_gb_s"].as_f64().unwrap() > 0.0);
    assert!(row["copy_gb_s"].as_f64().unwrap() > 0.0);
    let one = row["one_dispatch_us"].as_f64().unwrap();
    let two = row["two_dispatches_us"].as_f64().unwrap();
    assert!(one > 0.0 && two > 0.0, "{row}");
}

#[test]
fn bench_gemm_times_checked_products_and_refuses_bad_shapes() {
    let rows = json_rows(&[
        "bench",
        "gemm",
        "--m",
        "64",
        "--n",
        "256",
        "--k",
        "64",
        "--repeats",
        "2",
        "--json",
    ]);
    // `all`: both products and six ceiling shapes, each a timing or the reason it did not run.
    assert_eq!(rows.len(), 8, "{rows:?}");
    let simt = rows.iter().find(|r| r["kernel"] == "gemm").unwrap();
    assert!(simt["tflop_s"].as_f64().unwrap() > 0.0, "{simt}");
    assert!(simt["rel_l2"].as_f64().unwrap() <= 1e-5, "{simt}");
    // 64 x 256 fits every ceiling shape: each ran and was checked, or the adapter has no
    // tensor cores.
    for r in &rows {
        let checked = r["rel_l2"].as_f64().is_some_and(|e| e <= 3e-3);
        let absent = r["error"]
            .as_str()
            .is_some_and(|e| e.contains("not available"));
        assert!(checked || absent, "{r}");
    }
    for (bad, named) in [
        (&["--k", "12"][..], "--k"),
        (&["--kernel", "nope"][..], "--kernel nope"),
        (
            &["--kernel", "ceiling", "--tiles", "3x3"][..],
            "--tiles 3x3",
        ),
        (
            &["--kernel", "ceiling", "--subgroups", "3"][..],
            "--subgroups 3",
        ),
    ] {
        let mut args = vec!["bench", "gemm", "--m", "64", "--n", "64"];
        args.extend_from_slice(bad);
        let out = diffattn(&args);
        assert!(!out.status.success(), "{bad:?} was accepted");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains(named) && !err.contains("panicked"),
            "{bad:?}: {err}"
        );
    }
}

#[test]
fn bench_rotates_caches_and_refuses_a_kernel_the_adapter_lacks() {
    let args = [
        "bench",
        "attention",
        "--seq",
        "300",
        "--heads",
        "2",
        "--kv-heads",
        "1",
        "--repeats",
        "2",
        "--rotate",
        "3",
        "--variant",
        "standard",
        "--json",
    ];
    let out = diffattn(&args);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let row: serde_json::Value = serde_json::from_str(
        String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .next()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(row["rotate"], 3);
    assert_eq!(row["kv_bytes"], 2.0 * 300.0 * 64.0 * 4.0);
    let coop = diffattn(&[&args[..], &["--kernel", "decode-coop", "--kv-dtype", "f16"]].concat());
    let adapters = String::from_utf8(diffattn(&["adapters"]).stdout).unwrap();
    if !adapters.contains("decode-coop") {
        assert!(!coop.status.success());
        let err = String::from_utf8_lossy(&coop.stderr);
        assert!(
            err.contains("cooperative-matrix decode kernel is not available"),
            "{err}"
        );
    }
    // The subgroup decode kernel, asked for by name: it runs where the adapter lists it (its row
    // names it), and is refused by name elsewhere.
    let sg = diffattn(
        &[
            &args[..],
            &[
                "--kernel",
                "decode-subgroup",
                "--kv-dtype",
                "f16",
                "--rows",
                "2",
            ],
        ]
        .concat(),
    );
    if adapters.contains("decode-subgroup") {
        assert!(
            sg.status.success(),
            "{}",
            String::from_utf8_lossy(&sg.stderr)
        );
        let row: serde_json::Value = serde_json::from_str(
            String::from_utf8(sg.stdout)
                .unwrap()
                .lines()
                .next()
                .unwrap(),
        )
        .unwrap();
        assert_eq!(row["kernel"], "decode-subgroup", "{row}");
    } else {
        assert!(!sg.status.success());
        let err = String::from_utf8_lossy(&sg.stderr);
        assert!(
            err.contains("subgroup decode kernel is not available"),
            "{err}"
        );
    }
}

#[test]
fn attn_matches_the_reference_through_files() {
    let seed = common::fresh_seed("cli attn");
    let cfg = AttentionConfig {
        heads: 4,
        kv_heads: 2,
        head_dim: 32,
        mode: Mode::Diff,
        kv_dtype: KvDtype::F32,
        scale: None,
    };
    let call = AttentionCall {
        n_queries: 5,
        seq_len: 12,
        causal: true,
        past_len: 7,
    };
    let sh = attention::shapes(&cfg, &call);
    let mut rng = Rng::new(seed);
    let (q, k, v, lam) = (
        rng.normals(sh.q.0, 1.0),
        rng.normals(sh.kv.0, 1.0),
        rng.normals(sh.kv.0, 1.0),
        rng.normals(sh.lam.0, 1.0),
    );
    let input = tmp("attn-in.safetensors");
    let output = tmp("attn-out.safetensors");
    write_tensors(
        &input,
        &[
            ("q", vec![5, 8, 32], &q),
            ("k", vec![12, 2, 32], &k),
            ("v", vec![12, 2, 32], &v),
            ("lam", vec![5, 4], &lam),
        ],
    );
    let out = diffattn(&[
        "attn",
        "--in",
        input.to_str().unwrap(),
        "--out",
        output.to_str().unwrap(),
        "--causal",
        "--past-len",
        "7",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let bytes = std::fs::read(&output).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let t = st.tensor("out").unwrap();
    assert_eq!(t.shape(), &[5, 4, 32]);
    assert_eq!(t.dtype(), Dtype::F32);
    let got: Vec<f32> = t
        .data()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
        .collect();
    let want = reference::attention(
        &cfg,
        &call,
        &HostInputs {
            q: &q,
            k: &k,
            v: &v,
            lam: &lam,
        },
    )
    .unwrap();
    let (_, rel) = reference::compare(&got, &want);
    assert!(rel < 1e-5, "rel {rel}");

    // --reference writes the float64 reference itself (what the browser kernel test compares
    // with): F64, bit for bit what the library's reference gives, and no adapter needed.
    let ref_out = tmp("attn-ref.safetensors");
    let out = diffattn(&[
        "attn",
        "--reference",
        "--in",
        input.to_str().unwrap(),
        "--out",
        ref_out.to_str().unwrap(),
        "--causal",
        "--past-len",
        "7",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let bytes = std::fs::read(&ref_out).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let t = st.tensor("out").unwrap();
    assert_eq!(t.shape(), &[5, 4, 32]);
    assert_eq!(t.dtype(), Dtype::F64);
    let got: Vec<f64> = t
        .data()
        .chunks_exact(8)
        .map(|b| f64::from_le_bytes(b.try_into().unwrap()))
        .collect();
    assert_eq!(got, want);
}

fn attn_error(tensors: &[(&str, Vec<usize>, &[f32])], extra: &[&str]) -> String {
    let input = tmp(&format!(
        "bad-{}.safetensors",
        tensors.len() * 100 + extra.len()
    ));
    write_tensors(&input, tensors);
    let output = tmp("never.safetensors");
    let mut args = vec![
        "attn",
        "--in",
        input.to_str().unwrap(),
        "--out",
        output.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    let out = diffattn(&args);
    assert_eq!(
        out.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let err = String::from_utf8(out.stderr).unwrap();
    assert_eq!(err.lines().count(), 1, "not one line: {err}");
    err
}

#[test]
fn attn_rejects_bad_files_with_one_line_and_exit_code_2() {
    let x = vec![0.25f32; 2 * 4 * 8];
    let kv = vec![0.5f32; 3 * 2 * 8];
    let lam = vec![0.0f32; 2 * 2];
    let err = attn_error(
        &[
            ("q", vec![2, 4, 8], &x),
            ("k", vec![3, 2, 8], &kv),
            ("lam", vec![2, 2], &lam),
        ],
        &[],
    );
    assert!(err.contains("missing tensor `v`"), "{err}");
    let err = attn_error(
        &[
            ("q", vec![2, 4, 8], &x),
            ("k", vec![3, 2, 8], &kv),
            ("v", vec![2, 3, 8], &kv),
            ("lam", vec![2, 2], &lam),
        ],
        &[],
    );
    assert!(
        err.contains("`v` has shape [2, 3, 8] but `k` has [3, 2, 8]"),
        "{err}"
    );
    let err = attn_error(
        &[
            ("q", vec![2, 4, 8], &x),
            ("k", vec![3, 2, 8], &kv),
            ("v", vec![3, 2, 8], &kv),
            ("lam", vec![4], &lam),
        ],
        &[],
    );
    assert!(
        err.contains("`lam` has shape [4]; expected [2, 2]"),
        "{err}"
    );
    let err = attn_error(
        &[
            ("q", vec![64], &x),
            ("k", vec![3, 2, 8], &kv),
            ("v", vec![3, 2, 8], &kv),
        ],
        &["--mode", "standard"],
    );
    assert!(err.contains("expected 3 dimensions"), "{err}");

    // A damaged file and a non-f32 tensor.
    let damaged = tmp("damaged.safetensors");
    std::fs::write(&damaged, b"\x10\x00\x00\x00\x00\x00\x00\x00{\"q\": broken").unwrap();
    let out = diffattn(&[
        "attn",
        "--in",
        damaged.to_str().unwrap(),
        "--out",
        "/dev/null",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a valid safetensors file"));
    let halves = vec![half::f16::ONE; 8];
    let f16_file = tmp("f16.safetensors");
    let view = TensorView::new(Dtype::F16, vec![1, 1, 8], bytemuck::cast_slice(&halves)).unwrap();
    safetensors::serialize_to_file([("q", view)], None, &f16_file).unwrap();
    let out = diffattn(&[
        "attn",
        "--in",
        f16_file.to_str().unwrap(),
        "--out",
        "/dev/null",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("tensor `q` is F16; expected F32"));
    let out = diffattn(&[
        "attn",
        "--in",
        "/nonexistent/in.safetensors",
        "--out",
        "/dev/null",
    ]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn bench_prints_both_variants_and_their_ratio() {
    let rows = json_rows(&[
        "bench",
        "attention",
        "--seq",
        "512",
        "--heads",
        "4",
        "--kv-heads",
        "2",
        "--repeats",
        "3",
        "--json",
    ]);
    assert_eq!(rows.len(), 3);
    assert_eq!(rows[0]["variant"], "diff");
    assert_eq!(rows[1]["variant"], "standard");
    for r in &rows[..2] {
        assert!(r["median_us"].as_f64().unwrap() > 0.0, "{r}");
        assert!(r["gb_s"].as_f64().unwrap() > 0.0, "{r}");
    }
    assert!(rows[2]["ratio_diff_over_standard"].as_f64().unwrap() > 0.0);
}

#[test]
fn bad_adapter_index_is_a_clear_error() {
    let out = diffattn(&["--adapter", "99", "verify"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(err.contains("adapter index 99 is out of range"), "{err}");
}

/// SHA-256 as coreutils' sha256sum computes it: an implementation independent of ours.
fn sha256sum(path: &Path) -> String {
    let out = Command::new("sha256sum")
        .arg(path)
        .output()
        .expect("run sha256sum");
    assert!(out.status.success());
    String::from_utf8(out.stdout)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

#[test]
fn manifest_lists_sizes_and_hashes_and_checks_them() {
    let dir = tmp("manifest-model");
    std::fs::create_dir_all(dir.join("sub")).unwrap();
    let mut rng = Rng::new(11);
    // Sizes around the 1 MiB read buffer, an empty file, a nested one and a dotfile.
    let files: &[(&str, usize)] = &[
        ("model.safetensors", (1 << 20) + 7),
        ("config.json", 390),
        ("empty.bin", 0),
        ("sub/extra.bin", 1 << 20),
        (".hidden", 10),
    ];
    for (name, n) in files {
        let bytes: Vec<u8> = (0..*n).map(|_| (rng.next_u64() & 0xff) as u8).collect();
        std::fs::write(dir.join(name), bytes).unwrap();
    }
    let out = diffattn(&["manifest", dir.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let m: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(m["format"], "diffattn-manifest");
    assert_eq!(m["version"], 1);
    let listed: Vec<&String> = m["files"].as_object().unwrap().keys().collect();
    assert_eq!(
        listed,
        [
            "config.json",
            "empty.bin",
            "model.safetensors",
            "sub/extra.bin"
        ]
    );
    for key in listed {
        let path = dir.join(key);
        let e = &m["files"][key];
        assert_eq!(
            e["size"].as_u64().unwrap(),
            std::fs::metadata(&path).unwrap().len(),
            "{key}"
        );
        assert_eq!(e["sha256"].as_str().unwrap(), sha256sum(&path), "{key}");
    }

    let check = diffattn(&["manifest", "--check", dir.to_str().unwrap()]);
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );

    // One changed byte: --check names the file and fails; the single-file form updates its entry
    // and keeps the others.
    let mut bytes = std::fs::read(dir.join("config.json")).unwrap();
    bytes[100] ^= 1;
    std::fs::write(dir.join("config.json"), &bytes).unwrap();
    let check = diffattn(&["manifest", "--check", dir.to_str().unwrap()]);
    assert_eq!(check.status.code(), Some(1));
    let err = String::from_utf8_lossy(&check.stderr);
    assert!(
        err.contains("config.json: manifest says 390 bytes") && !err.contains("model.safetensors"),
        "{err}"
    );
    let one = diffattn(&["manifest", dir.join("config.json").to_str().unwrap()]);
    assert!(
        one.status.success(),
        "{}",
        String::from_utf8_lossy(&one.stderr)
    );
    let m2: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(
        m2["files"]["config.json"]["sha256"].as_str().unwrap(),
        sha256sum(&dir.join("config.json"))
    );
    assert_eq!(
        m2["files"]["model.safetensors"],
        m["files"]["model.safetensors"]
    );
    assert_eq!(m2["files"].as_object().unwrap().len(), 4);

    let missing = diffattn(&["manifest", dir.join("nope").to_str().unwrap()]);
    assert_eq!(missing.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("nope: No such file"));
}

#[test]
fn the_shipped_model_manifest_is_current() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/diffv2-small");
    let out = diffattn(&["manifest", "--check", dir.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `diffattn maps`: float64 maps whose rows are distributions over the visible positions, for
/// ids or a prompt; a standard model, a head out of range and ids beyond the vocabulary are
/// one-line errors.
#[test]
fn maps_prints_the_float64_maps_and_refuses_what_has_none() {
    use diffattn::model::random::RandomModel;
    let dir = tmp("maps-model");
    std::fs::remove_dir_all(&dir).ok();
    RandomModel::tiny("diff_v2", 3).write_dir(&dir).unwrap();
    let d = dir.to_str().unwrap();
    let out = diffattn(&[
        "maps", "--model", d, "--ids", "5,6,7", "--layer", "1", "--head", "1",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["ids"], serde_json::json!([5, 6, 7]));
    let p1: Vec<f64> = serde_json::from_value(v["p1"].clone()).unwrap();
    assert_eq!(p1.len(), 9);
    for (i, row) in p1.chunks(3).enumerate() {
        assert!(
            (row.iter().sum::<f64>() - 1.0).abs() < 1e-12,
            "row {i}: {row:?}"
        );
        assert!(
            row[i + 1..].iter().all(|&p| p == 0.0),
            "row {i} sees the future"
        );
    }
    let by_prompt = diffattn(&["maps", "--model", d, "--prompt", "ab"]);
    assert!(by_prompt.status.success());
    let v: serde_json::Value = serde_json::from_slice(&by_prompt.stdout).unwrap();
    // The byte-level tokenizer: id = byte + 1.
    assert_eq!(v["ids"], serde_json::json!([98, 99]));

    for (args, want) in [
        (
            vec!["--ids", "5", "--head", "2"],
            "layer 0, head 2: the model has 2 layers and 2 heads",
        ),
        (
            vec!["--ids", "264"],
            "token id 264 is outside the vocabulary (264)",
        ),
    ] {
        let mut all = vec!["maps", "--model", d];
        all.extend(args);
        let out = diffattn(&all);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && err.contains(want), "{err}");
    }
    let std_dir = tmp("maps-standard");
    std::fs::remove_dir_all(&std_dir).ok();
    RandomModel::tiny("standard", 3)
        .write_dir(&std_dir)
        .unwrap();
    let out = diffattn(&["maps", "--model", std_dir.to_str().unwrap(), "--ids", "5"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("attention maps of DIFF V2 need a diff_v2 model"),
        "{err}"
    );
}

/// `bench generate` on a model directory: one JSON row with the figures the benchmark tables
/// use, greedy and with alternatives listed; an out-of-range alternatives count is refused.
#[test]
fn bench_generate_reports_a_row_and_takes_alternatives() {
    let dir = tmp("bench-generate-model");
    diffattn::model::random::RandomModel::tiny("diff_v2", 9)
        .write_dir(&dir)
        .unwrap();
    let run = |extra: &[&str]| {
        let mut args = vec![
            "bench",
            "generate",
            "--model",
            dir.to_str().unwrap(),
            "--prompt-tokens",
            "5",
            "--tokens",
            "12",
            "--repeats",
            "1",
            "--json",
        ];
        args.extend_from_slice(extra);
        diffattn(&args)
    };
    for top in ["0", "3"] {
        let out = run(&["--top-logprobs", top]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let stdout = String::from_utf8(out.stdout).unwrap();
        let row: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
        assert_eq!(row["bench"], "generate");
        assert_eq!(row["top_logprobs"].as_u64(), Some(top.parse().unwrap()));
        for key in [
            "decode_tok_s",
            "prefill_tok_s",
            "first_token_ms",
            "cold_start_ms",
        ] {
            assert!(row[key].as_f64().unwrap() > 0.0, "{key}: {row}");
        }
    }
    let out = run(&["--top-logprobs", "21"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("at most 20"));
}
