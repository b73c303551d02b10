//! Cross-checks `dequantize` against llama.cpp's gguf-py on random blocks
//! (fixture written by tools/make_kquant_fixture.py with the `gguf` package from PyPI).

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

#[test]
fn matches_gguf_py() {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/data/kquant_gguf_py.json"
    ))
    .unwrap();
    let j: serde_json::Value = serde_json::from_str(&text).unwrap();
    let cases = j["cases"].as_array().unwrap();
    assert_eq!(cases.len(), 5);
    for c in cases {
        let t = ty(c["type"].as_str().unwrap());
        let bytes = hex(c["hex"].as_str().unwrap());
        let want: Vec<f32> = c["values"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap() as f32)
            .collect();
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
