//! The `diffattn attn` input file: the CLI's parser and shape check, then the float64 reference
//! on what they accept (small calls only).
#![no_main]

use diffattn::attention::{self, KvDtype, Mode};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // Byte 0 picks the mode and the mask, bytes 1..5 past_len; the rest is the file.
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let Some((past, file)) = rest.split_first_chunk::<4>() else {
        return;
    };
    let mode = if flags & 1 == 0 {
        Mode::Diff
    } else {
        Mode::Standard
    };
    let causal = flags & 2 != 0;
    // Half the inputs probe past_len near u32::MAX, where positions would wrap in the kernels.
    let past_len = if flags & 4 != 0 {
        u32::MAX - (u32::from_le_bytes(*past) & 0xff)
    } else {
        u32::from_le_bytes(*past) & 0xffff
    };
    let Ok(x) = attention::io::read_inputs(file, mode) else {
        return;
    };
    // u128: with a zero dimension the others may be as large as u32 allows.
    let (n, s, h, hkv, d) = (
        x.n_queries as u128,
        x.seq_len as u128,
        x.heads as u128,
        x.kv_heads as u128,
        x.head_dim as u128,
    );
    let q_heads = if mode == Mode::Diff { 2 * h } else { h };
    assert_eq!(x.q.len() as u128, n * q_heads * d);
    assert_eq!(x.k.len() as u128, s * hkv * d);
    assert_eq!(x.v.len(), x.k.len());
    assert_eq!(
        x.lam.len() as u128,
        if mode == Mode::Diff { n * h } else { 0 }
    );
    assert!(4 * (x.q.len() + x.k.len() + x.v.len() + x.lam.len()) <= file.len());

    let cfg = x.config(KvDtype::F32, None);
    let call = x.call(causal, past_len);
    if attention::check_host(&cfg, &call, &x.host()).is_err() {
        return;
    }
    // What the shape check accepts runs: no position wraps, the output has its shape.
    assert!(!causal || past_len as u128 + n <= u32::MAX as u128);
    if n * s * q_heads * d <= 1 << 20 {
        let out =
            diffattn::reference::attention(&cfg, &call, &x.host()).expect("accepted input runs");
        assert_eq!(out.len() as u128, n * h * d);
    }
});
