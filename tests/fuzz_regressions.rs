//! Inputs the fuzz targets (fuzz/, docs/reliability.md) found, each fed to the library path that
//! failed on it: each must now give a typed error, within bounded memory and time.

use diffattn::Error;
use diffattn::gguf::{Gguf, ModelError, model_summary};
use diffattn::tokenizer::Tokenizer;
use std::path::Path;
use std::time::{Duration, Instant};

fn data(name: &str) -> Vec<u8> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/fuzz")
        .join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Peak resident memory of this process in MiB (Linux; elsewhere no bound is checked).
fn peak_rss_mib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024)
}

/// tokenizers 0.22 panicked (`expect("Helper")`) on a `decoder` value that is not well-formed
/// JSON: bad syntax (found by `model_dir` in its first seconds) and, after a syntax-only check
/// was added, invalid UTF-8 inside a key there (found in the next run's first seconds).
#[test]
fn malformed_decoder_json_is_a_tokenizer_error() {
    for bytes in [
        data("tokenizer-malformed-decoder.json"),
        data("tokenizer-decoder-bad-escape.json"),
        br#"{"decoder":{"a" 1}}"#.to_vec(),
        b"{\"decoder\":{\"a\x9b\":1}}".to_vec(),
        br#"{"decoder":{"a":"\udc00"}}"#.to_vec(),
    ] {
        match Tokenizer::from_bytes(&bytes) {
            Err(Error::Tokenizer(m)) => assert!(m.contains("malformed tokenizer.json"), "{m}"),
            Err(e) => panic!("wrong error: {e}"),
            Ok(_) => panic!("a malformed tokenizer.json was accepted"),
        }
    }
}

/// Little-endian GGUF v3 metadata, no tensors.
fn gguf_with(kvs: &[(&str, u32, Vec<u8>)]) -> Vec<u8> {
    let mut b = b"GGUF".to_vec();
    b.extend(3u32.to_le_bytes());
    b.extend(0u64.to_le_bytes());
    b.extend((kvs.len() as u64).to_le_bytes());
    for (k, ty, v) in kvs {
        b.extend((k.len() as u64).to_le_bytes());
        b.extend(k.as_bytes());
        b.extend(ty.to_le_bytes());
        b.extend(v);
    }
    b
}

/// `llama.block_count` = 4,294,967,295 made `model_summary` build the list of every expected
/// tensor name (9 per block) before looking for the first: 20 GB for a 34 KB file. Found by
/// `gguf` as an out-of-memory in its first minute.
#[test]
fn huge_block_count_is_refused_without_allocating_for_it() {
    let u32v = |v: u32| v.to_le_bytes().to_vec();
    let arch = {
        let mut v = 5u64.to_le_bytes().to_vec();
        v.extend(b"llama");
        v
    };
    let small = gguf_with(&[
        ("general.architecture", 8, arch),
        ("llama.block_count", 4, u32v(u32::MAX)),
        ("llama.embedding_length", 4, u32v(32)),
        ("llama.feed_forward_length", 4, u32v(64)),
        ("llama.attention.head_count", 4, u32v(2)),
        ("llama.context_length", 4, u32v(64)),
        ("llama.vocab_size", 4, u32v(8)),
        (
            "llama.attention.layer_norm_rms_epsilon",
            6,
            1e-5f32.to_le_bytes().to_vec(),
        ),
    ]);
    let start = Instant::now();
    let g = Gguf::parse(&small).expect("a well-formed container");
    match model_summary(&g) {
        Err(ModelError::MissingTensor(name)) => assert_eq!(name, "token_embd.weight"),
        other => panic!("expected a missing tensor, got {other:?}"),
    }

    // The fuzzer's own input, through the whole GGUF model path.
    let found = data("gguf-huge-block-count.gguf");
    match diffattn::model::gguf::load("fuzz", &found) {
        Err(Error::Format { message, .. }) => assert!(message.contains("missing"), "{message}"),
        Err(e) => panic!("wrong error: {e}"),
        Ok(_) => panic!("the damaged file loaded"),
    }
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "{:?}",
        start.elapsed()
    );
    if let Some(mib) = peak_rss_mib() {
        assert!(mib < 1024, "peak resident memory {mib} MiB");
    }
}

/// `check_model_vocab` compared the number of tokenizer entries with the model's vocab_size, but
/// ids need not be dense: this tokenizer (found by `model_dir`) has 257 entries, one of them
/// `"z": 731`, and passed for a 264-token model, whose embedding has no row 731.
#[test]
fn tokenizer_ids_beyond_the_model_vocabulary_are_refused() {
    let tok = Tokenizer::from_bytes(&data("tokenizer-sparse-ids.json")).unwrap();
    assert_eq!(tok.vocab_size(), 257);
    assert_eq!(tok.encode("z", None).unwrap(), [731]);
    assert_eq!(tok.id_bound(), 732);
    match tok.check_model_vocab(264) {
        Err(Error::Tokenizer(m)) => assert!(m.contains("token id 731"), "{m}"),
        other => panic!("expected a tokenizer error, got {other:?}"),
    }
    tok.check_model_vocab(732)
        .expect("a vocabulary covering every id");
    // A dense tokenizer still passes at its exact size.
    let dense = diffattn::model::random::byte_tokenizer_json();
    let dense = Tokenizer::from_bytes(dense.as_bytes()).unwrap();
    dense.check_model_vocab(dense.vocab_size()).unwrap();
}
