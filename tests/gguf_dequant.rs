//! Cross-checks `dequantize` (f32) and `reference::dequant::dequantize` (float64) against
//! llama.cpp's gguf-py on random blocks (fixture written by tools/make_kquant_fixture.py with
//! the `gguf` package from PyPI).

use diffattn::gguf::{GgmlType, dequantize};

fn ty(name: &str) -> GgmlType {
    *GgmlType::ALL
        .iter()
        .find(|t| t.name() == name)
        .expect("known type")
}

fn hex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

/// The fixture's cases: (type, block bytes, gguf-py's f32 values).
fn cases() -> Vec<(GgmlType, Vec<u8>, Vec<f32>)> {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/data/kquant_gguf_py.json"
    ))
    .unwrap();
    let j: serde_json::Value = serde_json::from_str(&text).unwrap();
    let cases = j["cases"].as_array().unwrap();
    assert_eq!(cases.len(), 5);
    let mut out = vec![];
    for c in cases {
        let t = ty(c["type"].as_str().unwrap());
        let bytes = hex(c["hex"].as_str().unwrap());
        let want: Vec<f32> = c["values"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap() as f32)
            .collect();
        out.push((t, bytes, want));
    }
    out
}

#[test]
fn matches_gguf_py() {
    for (t, bytes, want) in cases() {
        let got = dequantize(t, &bytes, want.len() as u64).unwrap();
        let scale = want.iter().fold(0f32, |a, v| a.max(v.abs())).max(1e-6);
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            assert!(
                (g - w).abs() <= scale * 1e-5,
                "{t} element {i}: got {g}, gguf-py {w}"
            );
        }
        println!("{t}: {} values match gguf-py", want.len());
    }
}

/// The float64 dequantizer (what the model reference multiplies by) gives gguf-py's values to
/// their f32 rounding: gguf-py computes in f32, which rounds each value at most once (see
/// src/reference/dequant.rs), so within half an f32 ulp of the exact value.
#[test]
fn float64_dequantizer_matches_gguf_py() {
    for (t, bytes, want) in cases() {
        let got = diffattn::reference::dequant::dequantize(t, &bytes, want.len() as u64).unwrap();
        assert_eq!(got.len(), want.len());
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            let w = *w as f64;
            assert!(
                (g - w).abs() <= w.abs() * 2f64.powi(-24),
                "{t} element {i}: float64 {g}, gguf-py {w}"
            );
            // And the f32 rounding of the exact value is gguf-py's value itself.
            assert_eq!(*g as f32 as f64, w, "{t} element {i}");
        }
        println!("{t}: {} float64 values match gguf-py", want.len());
    }
}
