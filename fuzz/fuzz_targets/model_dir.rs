//! A model directory from strangers: config.json, the shard index, tokenizer.json and up to two
//! safetensors shards, each parsed alone and then together as `ModelSource::parse` does.
#![no_main]

use diffattn::model::weights::{HostWeights, Shard, parse_index};
use diffattn::model::{Config, ModelSource};
use diffattn::tokenizer::Tokenizer;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let parts = diffattn_fuzz::split(data, diffattn_fuzz::MODEL_PARTS.len());
    let flags = parts[0].first().copied().unwrap_or(0);
    let config_json = String::from_utf8_lossy(parts[1]).into_owned();
    let index_json = String::from_utf8_lossy(parts[2]);
    let tokenizer_json = parts[3];
    let n_shards = if flags & 1 == 0 { 1 } else { 2 };
    let shards = || -> Vec<Shard> {
        parts[4..4 + n_shards]
            .iter()
            .enumerate()
            .map(|(i, b)| Shard {
                name: format!("shard{i}"),
                bytes: b.to_vec(),
            })
            .collect()
    };

    if let Ok(cfg) = Config::from_json("config.json", &config_json) {
        cfg.validate().expect("a parsed config validates");
        // What the loader accepted survives its own serialisation (the browser worker and
        // `diffattn manifest` re-serialise configs).
        let again = serde_json::to_string(&cfg).expect("a config serialises");
        let back = Config::from_json("again", &again).expect("a serialised config parses");
        assert_eq!(back, cfg);
        let _ = diffattn::model::weights::expected_tensors(&cfg);
    }

    if let Ok(files) = parse_index("index", &index_json) {
        assert!(!files.is_empty());
        assert!(files.windows(2).all(|w| w[0] < w[1]), "sorted and unique");
    }

    let owned = shards();
    let ranges: Vec<std::ops::Range<usize>> = owned
        .iter()
        .map(|s| s.bytes.as_ptr() as usize..s.bytes.as_ptr() as usize + s.bytes.len())
        .collect();
    let input_bytes: usize = owned.iter().map(|s| s.bytes.len()).sum();
    if let Ok(w) = HostWeights::from_shards(owned) {
        // Every tensor lies inside the bytes it was parsed from and has exactly its shape's size.
        for name in w.names().map(str::to_string).collect::<Vec<_>>() {
            let (info, raw) = w.raw(&name).expect("a listed tensor");
            let p = raw.as_ptr() as usize;
            assert!(
                ranges
                    .iter()
                    .any(|r| r.start <= p && p + raw.len() <= r.end),
                "tensor `{name}` outside its shard"
            );
            let elements = info
                .shape
                .iter()
                .try_fold(1usize, |a, &d| a.checked_mul(d))
                .expect("a parsed shape's size fits usize");
            assert_eq!(Some(raw.len()), info.dtype.bytes_for(elements));
            assert_eq!(w.to_f32(&name).expect("widens").len(), elements);
        }
        assert!(w.total_bytes() <= input_bytes as u64);
    }

    if let Ok(tok) = Tokenizer::from_bytes(tokenizer_json) {
        let text: String = config_json.chars().take(48).collect();
        if let Ok(ids) = tok.encode(&text, None) {
            let _ = tok.decode(&ids);
            let _ = tok.decode_with_special(&ids);
            // A tokenizer the model accepts never yields an id beyond the model's vocabulary.
            let vocab = tok.vocab_size();
            if tok.check_model_vocab(vocab).is_ok() {
                assert!(
                    ids.iter().all(|&id| id < vocab),
                    "ids {ids:?} beyond the accepted vocabulary {vocab}"
                );
            }
        }
    }

    let source = ModelSource {
        origin: "fuzz".into(),
        config_json,
        shards: shards(),
        tokenizer_json: Some(tokenizer_json.to_vec()),
        gguf: None,
    };
    if let Ok((cfg, w, _)) = source.parse() {
        cfg.validate().expect("a loaded config validates");
        w.check(&cfg).expect("loaded weights match their config");
    }
});
