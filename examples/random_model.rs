//! Writes a random model directory in the diffattn format, for trying `diffattn generate`
//! without a trained checkpoint:
//!
//!     cargo run --example random_model -- /tmp/random-model [diff_v2|standard] [f32|f16|bf16] [small]

use diffattn::model::WeightDtype;
use diffattn::model::random::RandomModel;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(dir) = args.first() else {
        eprintln!("usage: random_model DIR [diff_v2|standard] [f32|f16|bf16] [small]");
        std::process::exit(2);
    };
    let attention = args.get(1).map_or("diff_v2", String::as_str);
    let mut m = RandomModel::tiny(attention, 42);
    m.dtype = match args.get(2).map_or("f32", String::as_str) {
        "f16" => WeightDtype::F16,
        "bf16" => WeightDtype::BF16,
        _ => WeightDtype::F32,
    };
    if args.get(3).map(String::as_str) == Some("small") {
        // The shipped model's shape at a third of the depth: a more realistic speed test.
        m.hidden_size = 384;
        m.layers = 2;
        m.heads = 6;
        m.kv_heads = 2;
        m.head_dim = 64;
        m.intermediate_size = 1024;
        m.vocab_size = 8192;
        m.context = 512;
        m.shards = 2;
    }
    if let Err(e) = m.write_dir(dir.as_ref()) {
        eprintln!("error: {dir}: {e}");
        std::process::exit(1);
    }
    println!("wrote {dir}");
}
