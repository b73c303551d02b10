//! Sampling: reproducible with a seed, greedy limits, and the documented distributions
//! (statistical checks with fixed seeds, so they cannot flake).

use diffattn::sample::{Sampler, SamplingParams, argmax};

fn params(temperature: f32, top_k: usize, top_p: f32, seed: u64) -> SamplingParams {
    SamplingParams {
        temperature,
        top_k,
        top_p,
        repeat_penalty: 1.0,
        repeat_last_n: 0,
        seed,
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
