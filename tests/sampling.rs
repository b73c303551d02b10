//! Sampling: reproducible with a seed, greedy limits, and the documented distributions
//! (statistical checks with fixed seeds, so they cannot flake).

use diffattn::sample::{
    MAX_TOP_LOGPROBS, Sampler, SamplingParams, argmax, log_normaliser, logprob, top_logprobs,
};

fn params(temperature: f32, top_k: usize, top_p: f32, seed: u64) -> SamplingParams {
    SamplingParams {
        temperature,
        top_k,
        top_p,
        repeat_penalty: 1.0,
        repeat_last_n: 0,
        seed,
        logit_bias: Vec::new(),
    }
}

fn logits(n: usize, seed: u64) -> Vec<f32> {
    let mut rng = diffattn::testing::Rng::new(seed);
    rng.normals(n, 2.0)
}

fn counts(s: &mut Sampler, logits: &[f32], draws: usize) -> Vec<usize> {
    let mut c = vec![0; logits.len()];
    for _ in 0..draws {
        c[s.sample(logits, &[]) as usize] += 1;
    }
    c
}

#[test]
fn same_seed_same_tokens_other_seed_other_tokens() {
    let l = logits(500, 1);
    let run = |seed| {
        let mut s = Sampler::new(params(1.0, 0, 1.0, seed));
        (0..200).map(|_| s.sample(&l, &[])).collect::<Vec<u32>>()
    };
    assert_eq!(run(7), run(7));
    assert_ne!(run(7), run(8));
}

#[test]
fn top_k_one_and_zero_temperature_are_greedy() {
    for seed in 0..20 {
        let l = logits(300, seed);
        let want = argmax(&l);
        let mut k1 = Sampler::new(params(1.5, 1, 1.0, seed));
        let mut t0 = Sampler::new(params(0.0, 50, 0.9, seed));
        for _ in 0..10 {
            assert_eq!(k1.sample(&l, &[]), want);
            assert_eq!(t0.sample(&l, &[]), want);
        }
    }
}

#[test]
fn argmax_takes_the_lowest_index_of_a_tie() {
    assert_eq!(argmax(&[1.0, 3.0, 3.0, -1.0]), 1);
    assert_eq!(argmax(&[f32::NAN, 0.5, 0.2]), 1);
}

/// At temperature 1 with no truncation, frequencies follow softmax(logits).
#[test]
fn temperature_one_draws_from_the_softmax() {
    let l = [0.0f32, 1.0, 2.0, -1.0];
    let z: f64 = l.iter().map(|&x| (x as f64).exp()).sum();
    let n = 40_000;
    let c = counts(&mut Sampler::new(params(1.0, 0, 1.0, 3)), &l, n);
    for (i, &x) in l.iter().enumerate() {
        let p = (x as f64).exp() / z;
        let f = c[i] as f64 / n as f64;
        // 5 standard deviations of a binomial frequency.
        let sd = (p * (1.0 - p) / n as f64).sqrt();
        assert!(
            (f - p).abs() < 5.0 * sd,
            "token {i}: frequency {f:.4}, softmax {p:.4}"
        );
    }
}

/// Lower temperature sharpens: the top token's share grows as T falls; T = 2 flattens.
#[test]
fn temperature_sharpens_and_flattens() {
    let l = [0.0f32, 1.0, 2.0, -1.0];
    let share =
        |t: f32| counts(&mut Sampler::new(params(t, 0, 1.0, 5)), &l, 20_000)[2] as f64 / 20_000.0;
    let (cold, one, hot) = (share(0.3), share(1.0), share(2.0));
    assert!(
        cold > 0.95 && cold > one && one > hot,
        "shares: T=0.3 {cold}, T=1 {one}, T=2 {hot}"
    );
    // softmax(l / 0.3)[2] is 0.9643; T = 2 gives 0.4550.
    assert!(
        (cold - 0.9643).abs() < 0.01 && (hot - 0.4550).abs() < 0.02,
        "{cold} {hot}"
    );
}

/// top-p keeps the smallest head of the sorted distribution reaching p, renormalised.
#[test]
fn top_p_keeps_the_nucleus_only() {
    // Probabilities 0.5, 0.3, 0.15, 0.05.
    let l: Vec<f32> = [0.5f64, 0.3, 0.15, 0.05]
        .iter()
        .map(|p| p.ln() as f32)
        .collect();
    let s = Sampler::new(params(1.0, 0, 0.75, 11));
    let dist = s.distribution(&l, &[]);
    assert_eq!(dist.iter().map(|d| d.0).collect::<Vec<_>>(), vec![0, 1]);
    assert!((dist[0].1 - 0.625).abs() < 1e-6 && (dist[1].1 - 0.375).abs() < 1e-6);
    let n = 20_000;
    let c = counts(&mut Sampler::new(params(1.0, 0, 0.75, 11)), &l, n);
    assert_eq!(
        c[2] + c[3],
        0,
        "tokens outside the nucleus were drawn: {c:?}"
    );
    let f = c[0] as f64 / n as f64;
    assert!((f - 0.625).abs() < 0.02, "frequency of the top token {f}");
    // p above 0.8 needs the third token too; a tiny p still keeps one.
    assert_eq!(
        Sampler::new(params(1.0, 0, 0.81, 0))
            .distribution(&l, &[])
            .len(),
        3
    );
    assert_eq!(
        Sampler::new(params(1.0, 0, 0.01, 0))
            .distribution(&l, &[])
            .len(),
        1
    );
}

#[test]
fn top_k_truncates_to_the_k_best() {
    let l = logits(100, 9);
    let mut order: Vec<u32> = (0..100).collect();
    order.sort_by(|&a, &b| l[b as usize].total_cmp(&l[a as usize]));
    let c = counts(&mut Sampler::new(params(5.0, 3, 1.0, 2)), &l, 3000);
    for (id, &n) in c.iter().enumerate() {
        assert_eq!(
            n > 0,
            order[..3].contains(&(id as u32)),
            "token {id} drawn {n} times"
        );
    }
}

#[test]
fn repetition_penalty_divides_positive_and_multiplies_negative_logits() {
    let mut p = params(0.0, 0, 1.0, 0);
    p.repeat_penalty = 2.0;
    let s = Sampler::new(p);
    let mut l = vec![4.0f32, -1.0, 3.0, 1.0];
    s.penalise(&mut l, &[0, 1, 0]);
    assert_eq!(l, vec![2.0, -2.0, 3.0, 1.0]);
    // Greedy now prefers token 2 over the repeated token 0.
    let mut s = Sampler::new(SamplingParams {
        repeat_penalty: 2.0,
        ..params(0.0, 0, 1.0, 0)
    });
    assert_eq!(s.sample(&[4.0, -1.0, 3.0, 1.0], &[0]), 2);
    // The window: with repeat_last_n = 1 only the last token is penalised.
    let s = Sampler::new(SamplingParams {
        repeat_penalty: 2.0,
        repeat_last_n: 1,
        ..params(0.0, 0, 1.0, 0)
    });
    let mut l = vec![4.0f32, 2.0];
    s.penalise(&mut l, &[0, 1]);
    assert_eq!(l, vec![4.0, 1.0]);
}

/// Top-k by partial selection gives exactly the distribution of sorting every candidate: the same
/// k tokens (ties go to the lower id), in the same order, with the same probabilities.
#[test]
fn top_k_selection_matches_a_full_sort() {
    let mut l = logits(8192, 21);
    // Ties across the cut: many tokens share the 40th-largest value.
    let mut sorted = l.clone();
    sorted.sort_by(|a, b| b.total_cmp(a));
    let cut = sorted[39];
    for x in l.iter_mut().step_by(97) {
        *x = cut;
    }
    for (k, top_p) in [(40, 1.0), (40, 0.9), (1000, 0.95), (8191, 1.0)] {
        let s = Sampler::new(params(0.7, k, top_p, 0));
        let got = s.distribution(&l, &[]);
        // The reference: every candidate sorted, most likely first, ties to the lower id.
        let mut all: Vec<(u32, f64)> = l
            .iter()
            .enumerate()
            .map(|(i, &x)| (i as u32, x as f64 / 0.7))
            .collect();
        all.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        all.truncate(k);
        let ids: Vec<u32> = all.iter().map(|c| c.0).collect();
        let got_ids: Vec<u32> = got.iter().map(|c| c.0).collect();
        assert_eq!(
            got_ids[..],
            ids[..got_ids.len()],
            "k = {k}, top_p = {top_p}"
        );
        if top_p >= 1.0 {
            assert_eq!(got_ids.len(), k);
        }
        let total: f64 = got.iter().map(|c| c.1).sum();
        assert!((total - 1.0).abs() < 1e-9);
    }
}

/// The logit bias is added to the raw logits before everything else: entries for one id add up,
/// -inf bans a token (greedy and sampled), and the penalty then sees the biased sign.
#[test]
fn logit_bias_adds_to_logits_and_minus_infinity_bans() {
    let l = vec![3.0f32, 1.0, 0.5, -2.0];
    let with = |bias: Vec<(u32, f32)>, base: SamplingParams| SamplingParams {
        logit_bias: bias,
        ..base
    };
    // Greedy: banning token 0 leaves token 1; +1 and +2 on token 3 (added up) make it win.
    let mut s = Sampler::new(with(vec![(0, f32::NEG_INFINITY)], params(0.0, 0, 1.0, 0)));
    assert_eq!(s.sample(&l, &[]), 1);
    let mut s = Sampler::new(with(vec![(3, 1.0), (3, 4.5)], params(0.0, 0, 1.0, 0)));
    assert_eq!(s.sample(&l, &[]), 3);
    // Sampled: the distribution is the softmax of the biased logits, banned tokens absent.
    let p = with(
        vec![(0, f32::NEG_INFINITY), (2, 0.5)],
        params(1.0, 0, 1.0, 0),
    );
    let dist = Sampler::new(p.clone()).distribution(&l, &[]);
    let biased = [1.0f64, 1.0, -2.0];
    let z: f64 = biased.iter().map(|x| x.exp()).sum();
    let want = [
        (1u32, 1.0f64.exp() / z),
        (2, 1.0f64.exp() / z),
        (3, (-2.0f64).exp() / z),
    ];
    assert_eq!(dist.len(), 3, "{dist:?}");
    for ((id, q), (wid, wq)) in dist.iter().zip(want) {
        assert_eq!(*id, wid);
        assert!((q - wq).abs() < 1e-12, "token {id}: {q} against {wq}");
    }
    let mut s = Sampler::new(p);
    for _ in 0..500 {
        assert_ne!(s.sample(&l, &[]), 0, "a banned token was drawn");
    }
    // The penalty applies after the bias: -4 + 3 = -1 is negative, so it is multiplied.
    let s = Sampler::new(SamplingParams {
        repeat_penalty: 2.0,
        ..with(vec![(0, -4.0)], params(0.0, 0, 1.0, 0))
    });
    let mut x = l.clone();
    s.bias(&mut x);
    s.penalise(&mut x, &[0]);
    assert_eq!(x[0], -2.0);
    assert!(!with(vec![(1, 0.5)], SamplingParams::greedy()).is_plain_greedy());
}

/// Bias settings that cannot be applied are refused by name: ids beyond the vocabulary, NaN,
/// +inf, a finite bias beyond the bound, a bias that bans every token.
#[test]
fn bad_logit_biases_are_refused() {
    let with = |bias: Vec<(u32, f32)>| SamplingParams {
        logit_bias: bias,
        ..SamplingParams::default()
    };
    assert!(
        with(vec![(3, -1.0), (0, f32::NEG_INFINITY)])
            .check(4)
            .is_ok()
    );
    for (bias, says) in [
        (vec![(4, 1.0)], "outside the vocabulary"),
        (vec![(1, f32::NAN)], "logit bias NaN"),
        (vec![(1, f32::INFINITY)], "logit bias inf"),
        (vec![(1, 2.0e6)], "logit bias 2000000"),
        (
            (0..4).map(|i| (i, f32::NEG_INFINITY)).collect(),
            "bans every token",
        ),
    ] {
        let err = with(bias.clone()).check(4).unwrap_err().to_string();
        assert!(err.contains(says), "{bias:?}: {err}");
    }
}

/// The alternatives: the n largest raw logits, most likely first, ties to the lower id, with
/// their log-softmax; non-finite logits left out; at most MAX_TOP_LOGPROBS.
#[test]
fn top_logprobs_are_the_largest_logits_with_their_log_softmax() {
    let mut l = logits(1000, 5);
    let mut sorted: Vec<(u32, f32)> = l.iter().enumerate().map(|(i, &x)| (i as u32, x)).collect();
    sorted.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    // A tie at the third place: the lower id comes first.
    let third = sorted[2];
    let twin = sorted[500].0;
    l[twin as usize] = third.1;
    // Non-finite values where they would not be listed anyway, and one that would (+inf).
    l[sorted[999].0 as usize] = f32::NAN;
    l[sorted[998].0 as usize] = f32::INFINITY;
    let z = log_normaliser(&l);
    let direct = {
        let finite: Vec<f64> = l
            .iter()
            .filter(|x| x.is_finite())
            .map(|&x| x as f64)
            .collect();
        let m = finite.iter().cloned().fold(f64::MIN, f64::max);
        m + finite.iter().map(|x| (x - m).exp()).sum::<f64>().ln()
    };
    assert!((z - direct).abs() < 1e-12);
    let top = top_logprobs(&l, 5);
    let ids: Vec<u32> = top.iter().map(|a| a.id).collect();
    let (lo, hi) = (third.0.min(twin), third.0.max(twin));
    assert_eq!(ids, vec![sorted[0].0, sorted[1].0, lo, hi, sorted[3].0]);
    for a in &top {
        let want = l[a.id as usize] as f64 - z;
        assert!((a.logprob as f64 - want).abs() < 1e-6);
        assert_eq!(a.logprob, logprob(&l, a.id));
    }
    assert!(top_logprobs(&l, 0).is_empty());
    assert_eq!(top_logprobs(&l, 100).len(), MAX_TOP_LOGPROBS);
    assert_eq!(top_logprobs(&[1.0, f32::NAN], 5).len(), 1);
}
