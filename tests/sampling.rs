//! The sampler against golden cases of the official `sample_token` (tests/golden/lm/sampling,
//! made by tests/golden/make_lm_golden.py; its README lists the semantics).

use std::collections::BTreeSet;
use std::path::Path;

use flm_kernels::sampling::{SampleRng, Sampler, SamplingParams};
use serde_json::Value;

const GOLDEN: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/golden/lm/sampling");

fn npy<T: npyz::Deserialize>(name: &str) -> Vec<T> {
    let bytes = std::fs::read(Path::new(GOLDEN).join(name)).unwrap();
    npyz::NpyFile::new(&bytes[..]).unwrap().into_vec().unwrap()
}

struct Case {
    name: String,
    params: SamplingParams,
    window: Vec<i32>,
    logits: Vec<f32>,
    /// Dense over the vocabulary, zero for excluded ids.
    probs: Vec<f32>,
    support: usize,
    argmax: i32,
}

fn cases() -> Vec<Case> {
    let text = std::fs::read_to_string(Path::new(GOLDEN).join("cases.json")).unwrap();
    let json: Value = serde_json::from_str(&text).unwrap();
    let cases: Vec<Case> = json["cases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            let vocab = c["vocab"].as_u64().unwrap() as usize;
            let s = |k: &str| c[k].as_str().unwrap();
            let window: Vec<i32> = c["window_ids"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_i64().unwrap() as i32)
                .collect();
            let logits = match s("logits_format") {
                "dense" => npy::<f32>(s("logits")),
                "sparse" => {
                    let mut l = vec![c["fill"].as_f64().unwrap() as f32; vocab];
                    let ids = npy::<i32>(s("logit_ids"));
                    let values = npy::<f32>(s("logit_values"));
                    assert_eq!(ids.len(), values.len());
                    for (&i, &v) in ids.iter().zip(&values) {
                        l[i as usize] = v;
                    }
                    l
                }
                f => panic!("logits format {f}"),
            };
            let probs = match s("probs_format") {
                "dense" => npy::<f32>(s("probs")),
                "sparse" => {
                    let mut p = vec![0f32; vocab];
                    let ids = npy::<i32>(s("prob_ids"));
                    let values = npy::<f32>(s("prob_values"));
                    assert_eq!(ids.len(), values.len());
                    for (&i, &v) in ids.iter().zip(&values) {
                        p[i as usize] = v;
                    }
                    p
                }
                f => panic!("probs format {f}"),
            };
            assert_eq!(logits.len(), vocab);
            assert_eq!(probs.len(), vocab);
            Case {
                name: s("name").to_string(),
                params: SamplingParams {
                    temperature: c["temp"].as_f64().unwrap() as f32,
                    top_p: c["top_p"].as_f64().unwrap() as f32,
                    top_k: c["top_k"].as_u64().unwrap() as u32,
                    repetition_penalty: c["repetition_penalty"].as_f64().unwrap() as f32,
                    repetition_window: window.len(),
                },
                window,
                logits,
                probs,
                support: c["support"].as_u64().unwrap() as usize,
                argmax: c["argmax_after_penalty"].as_i64().unwrap() as i32,
            }
        })
        .collect();
    assert_eq!(cases.len(), 8, "cases.json lists 8 cases");
    cases
}

fn case(name: &str) -> Case {
    cases().into_iter().find(|c| c.name == name).unwrap()
}

fn distribution(c: &Case, window: &[i32]) -> Vec<f32> {
    let mut sampler = Sampler::new(c.logits.len(), c.params);
    let mut logits = c.logits.clone();
    sampler.distribution(&mut logits, window).to_vec()
}

/// Scaled to sum 1, in f64 (the golden top-k weights are renormalised, ours are not).
fn normalised(p: &[f32]) -> Vec<f64> {
    let sum: f64 = p.iter().map(|&x| x as f64).sum();
    p.iter().map(|&x| x as f64 / sum).collect()
}

fn support(p: &[f32]) -> BTreeSet<usize> {
    (0..p.len()).filter(|&i| p[i] > 0.0).collect()
}

// Both sides compute the same f32 arguments of exp (l / T, minus the max of the same values),
// so after renormalising in f64 (which removes the common scale of the sum) they differ by the
// exp implementation (1–2 ulp) and the rounding of the final divisions: a few 1e-7 relative.
// 1e-5 relative per id leaves a wide margin yet catches any change of the semantics (a
// penalty applied twice moves a logit by 20 %).
const REL_TOL: f64 = 1e-5;

#[test]
fn distributions_match_the_golden_cases() {
    for c in cases() {
        let ours = distribution(&c, &c.window);
        let (s_ours, s_want) = (support(&ours), support(&c.probs));
        assert_eq!(s_want.len(), c.support, "{}: golden support size", c.name);
        assert_eq!(s_ours, s_want, "{}: support", c.name);
        let (a, b) = (normalised(&ours), normalised(&c.probs));
        let (mut max_abs, mut max_rel) = (0f64, 0f64);
        for &i in &s_want {
            let err = (a[i] - b[i]).abs();
            max_abs = max_abs.max(err);
            max_rel = max_rel.max(err / a[i].max(b[i]));
            assert!(
                err <= REL_TOL * a[i].max(b[i]),
                "{}: id {i}: ours {} golden {}",
                c.name,
                a[i],
                b[i]
            );
        }
        eprintln!(
            "{}: support {}, max difference {max_abs:.1e} abs, {max_rel:.1e} relative",
            c.name, c.support
        );
    }
}

#[test]
fn temperature_zero_is_the_argmax_after_the_penalty() {
    for c in cases() {
        let params = SamplingParams {
            temperature: 0.0,
            ..c.params
        };
        let mut sampler = Sampler::new(c.logits.len(), params);
        let mut logits = c.logits.clone();
        let mut rng = SampleRng::new(0);
        let got = sampler.sample(&mut logits, &c.window, rng.uniform());
        assert_eq!(got, c.argmax, "{}", c.name);
    }
}

/// Empirical frequencies of `n` draws against the golden distribution.
fn check_draws(c: &Case, n: usize, seed: u64) {
    let want = normalised(&c.probs);
    let mut sampler = Sampler::new(c.logits.len(), c.params);
    let mut rng = SampleRng::new(seed);
    let mut counts = vec![0usize; c.logits.len()];
    for _ in 0..n {
        // `sample` penalises its logits in place: start each draw from the raw ones.
        let mut logits = c.logits.clone();
        let id = sampler.sample(&mut logits, &c.window, rng.uniform());
        assert!(
            c.probs[id as usize] > 0.0,
            "{}: drew {id}, outside the support",
            c.name
        );
        counts[id as usize] += 1;
    }
    // Each count is binomial: 5 standard errors make a false alarm about 1e-6 per id (the
    // draws are seeded, so the outcome is fixed anyway); 1e-3 covers ids of tiny p, whose
    // binomial is far from normal.
    let mut worst = 0f64;
    for (i, &p) in want.iter().enumerate() {
        let f = counts[i] as f64 / n as f64;
        let se = (p * (1.0 - p) / n as f64).sqrt();
        if se > 0.0 {
            worst = worst.max((f - p).abs() / se);
        }
        let bound = 5.0 * se + 1e-3;
        assert!(
            (f - p).abs() <= bound,
            "{}: id {i}: frequency {f}, golden {p}, bound {bound}",
            c.name
        );
    }
    eprintln!("{}: largest deviation {worst:.1} standard errors", c.name);
}

#[test]
fn draws_follow_the_nucleus_distribution() {
    // Support of 10 ids, top-p.
    check_draws(&case("audio_default"), 20_000, 7);
}

#[test]
fn draws_follow_the_unnormalised_top_k_weights() {
    // Support of 20 ids: the race draws from the top-k weights as they are.
    check_draws(&case("top_k_only"), 20_000, 8);
}

#[test]
fn penalty_applies_once_per_distinct_id() {
    for name in ["plain_penalty_repeats", "audio_default"] {
        let c = case(name);
        let mut distinct = vec![];
        for &id in &c.window {
            if !distinct.contains(&id) {
                distinct.push(id);
            }
        }
        assert!(
            distinct.len() < c.window.len(),
            "{name}: window has repeats"
        );
        let sampler = Sampler::new(c.logits.len(), c.params);
        let (mut a, mut b) = (c.logits.clone(), c.logits.clone());
        sampler.penalize(&mut a, &c.window);
        sampler.penalize(&mut b, &distinct);
        assert_eq!(a, b, "{name}: penalised logits");
        assert_eq!(
            distribution(&c, &c.window),
            distribution(&c, &distinct),
            "{name}: distribution"
        );
    }
}

#[test]
fn same_seed_same_samples() {
    let c = case("audio_default");
    let draws = |seed: u64| -> Vec<i32> {
        let mut sampler = Sampler::new(c.logits.len(), c.params);
        let mut rng = SampleRng::new(seed);
        (0..500)
            .map(|_| sampler.sample(&mut c.logits.clone(), &c.window, rng.uniform()))
            .collect()
    };
    assert_eq!(draws(11), draws(11));
    // 500 draws over 10 ids: another seed giving the same sequence would be a broken seed.
    assert_ne!(draws(11), draws(12));
}

// ---------------------------------------------------------------------------------------------
// The graph sampler (`flm_kernels::sample_graph`), which chooses tokens where their logits
// are computed (the depth transformer's step graph, llama.cpp's graph on a device): the same
// law and the same draws as the host's sampler, on the CPU backend.

use flm_kernels::ggml::{Backend, F32, Graph, I32};
use flm_kernels::sample_graph::{self, DrawInputs};
use flm_kernels::staging::StagingBuilder;

/// `uniforms.len()` draws from case `c` with `params`, all in one graph: one stream per
/// uniform number (the batch dimension), each with the case's logits and window. Returns the
/// tokens and the check values.
fn graph_draws(c: &Case, params: SamplingParams, uniforms: &[f32]) -> (Vec<i32>, Vec<f32>) {
    let cpu = Backend::cpu(2).unwrap();
    let (v, b) = (c.logits.len() as i64, uniforms.len() as i64);
    let w = c.window.len().max(1) as i64;
    let mut ib = StagingBuilder::new(4);
    let logits = ib.tensor(F32, &[v, b], "logits");
    let window = ib.tensor(I32, &[w, b], "window");
    let uniform = ib.tensor(F32, &[1, b], "uniform");
    let penalty = ib.tensor(F32, &[1], "penalty");
    let mut inputs = ib.build(&cpu).unwrap();
    let mut ob = StagingBuilder::new(2);
    let tokens = ob.tensor(I32, &[1, 1, b], "tokens");
    let checks = ob.tensor(F32, &[1, 1, b], "checks");
    let mut outputs = ob.build(&cpu).unwrap();
    let mut graph = Graph::new(256);
    let g = &graph.ctx;
    let draw = sample_graph::build(
        g,
        logits,
        &params,
        &DrawInputs {
            window: Some(window),
            uniform,
            penalty: Some(penalty),
            mask: None,
        },
    );
    let (t, k) = (g.cpy(draw.token, tokens), g.cpy(draw.check, checks));
    graph.expand(t);
    graph.expand(k);
    graph.allocate(&cpu).unwrap();
    graph.check_supported(&cpu, "sampling graph").unwrap();
    let mut ids = c.window.clone();
    ids.resize(w as usize, v as i32);
    for s in 0..b as usize {
        inputs.put(logits, s * v as usize, &c.logits);
        inputs.put(window, s * w as usize, &ids);
    }
    inputs.put(uniform, 0, uniforms);
    inputs.put(penalty, 0, &[params.repetition_penalty]);
    inputs.upload(&cpu);
    graph.compute_async(&cpu).unwrap();
    outputs.download(&cpu);
    cpu.synchronize();
    let mut got = vec![0i32; b as usize];
    let mut chk = vec![0f32; b as usize];
    outputs.get(tokens, 0, &mut got);
    outputs.get(checks, 0, &mut chk);
    (got, chk)
}

fn uniforms(n: usize, seed: u64) -> Vec<f32> {
    let mut rng = SampleRng::new(seed);
    (0..n).map(|_| rng.uniform()).collect()
}

#[test]
fn graph_greedy_is_the_argmax_after_the_penalty() {
    for c in cases() {
        let params = SamplingParams {
            temperature: 0.0,
            ..c.params
        };
        let (got, check) = graph_draws(&c, params, &[0.5]);
        assert_eq!(got[0], c.argmax, "{}", c.name);
        // The check value is the chosen logit after the penalty, as the host computes it.
        let mut logits = c.logits.clone();
        Sampler::new(logits.len(), params).penalize(&mut logits, &c.window);
        assert_eq!(
            check[0].to_bits(),
            logits[c.argmax as usize].to_bits(),
            "{}",
            c.name
        );
    }
}

/// The penalty in the graph is the host's to the bit, on both of its branches: each id of
/// the window in turn is made the largest logit (the others pushed far below), positive or
/// negative, and the greedy draw's check value, its logit after the penalty, is compared with
/// the host's.
#[test]
fn graph_penalty_is_the_hosts_to_the_bit() {
    for name in [
        "plain_penalty_repeats",
        "audio_default",
        "text_top_k_penalty",
    ] {
        let c = case(name);
        let params = SamplingParams {
            temperature: 0.0,
            ..c.params
        };
        let mut seen = vec![];
        for (k, &id) in c.window.iter().enumerate() {
            if seen.contains(&id) || seen.len() == 8 {
                continue;
            }
            seen.push(id);
            let mut probe = case(name);
            for l in &mut probe.logits {
                *l -= 1000.0;
            }
            // Odd places of the window probe the negative branch.
            let sign = if k % 2 == 0 { 1.0 } else { -1.0 };
            probe.logits[id as usize] = sign * (0.3711 + k as f32 * 0.173);
            let (got, check) = graph_draws(&probe, params, &[0.5]);
            let mut host = probe.logits.clone();
            Sampler::new(host.len(), params).penalize(&mut host, &probe.window);
            assert_eq!(got[0], id, "{name}: id {id}");
            assert_eq!(
                check[0].to_bits(),
                host[id as usize].to_bits(),
                "{name}: id {id}: {} against the host's {}",
                check[0],
                host[id as usize]
            );
            assert_ne!(
                host[id as usize], probe.logits[id as usize],
                "{name}: penalised"
            );
        }
        assert!(
            seen.len() >= 4,
            "{name}: {} distinct ids probed",
            seen.len()
        );
    }
}

/// Chi-square statistic of `counts` against the golden distribution, bins with fewer than 5
/// expected draws pooled into one; and its degrees of freedom.
fn chi_square(c: &Case, counts: &[usize], n: usize) -> (f64, usize) {
    let want = normalised(&c.probs);
    let (mut chi2, mut bins) = (0f64, 0usize);
    let (mut pooled_o, mut pooled_e) = (0f64, 0f64);
    for (i, &p) in want.iter().enumerate() {
        let e = p * n as f64;
        let o = counts[i] as f64;
        if p == 0.0 {
            assert_eq!(counts[i], 0, "{}: drew id {i}, outside the support", c.name);
            continue;
        }
        if e < 5.0 {
            pooled_o += o;
            pooled_e += e;
        } else {
            chi2 += (o - e).powi(2) / e;
            bins += 1;
        }
    }
    if pooled_e > 0.0 {
        chi2 += (pooled_o - pooled_e).powi(2) / pooled_e;
        bins += 1;
    }
    (chi2, bins.saturating_sub(1))
}

/// The chi-square value that a true distribution exceeds with probability 1e-4
/// (Wilson-Hilferty's approximation, within a few % for 1 or more degrees of freedom).
fn chi_square_bound(df: usize) -> f64 {
    let k = df.max(1) as f64;
    let z = 3.719; // the normal's 1 - 1e-4 quantile
    k * (1.0 - 2.0 / (9.0 * k) + z * (2.0 / (9.0 * k)).sqrt()).powi(3)
}

/// Draws of the graph sampler and of the host sampler with the same uniform numbers: both
/// follow the golden law (chi-square at p = 1e-4; the draws are seeded, so the outcome is
/// fixed), and they are the same draws but where the two sides' softmax rounds differently
/// right at a boundary between two candidates.
fn check_graph_law(name: &str, n: usize, batch: usize) {
    let c = case(name);
    let us = uniforms(n, 21);
    let mut counts = vec![0usize; c.logits.len()];
    let mut host_counts = vec![0usize; c.logits.len()];
    let mut host = Sampler::new(c.logits.len(), c.params);
    let mut differ = 0;
    for chunk in us.chunks(batch) {
        let (got, check) = graph_draws(&c, c.params, chunk);
        for ((&id, &chk), &u) in got.iter().zip(&check).zip(chunk) {
            assert!(chk.is_finite() && chk > 0.0, "{name}: check value {chk}");
            counts[id as usize] += 1;
            let h = host.sample(&mut c.logits.clone(), &c.window, u);
            host_counts[h as usize] += 1;
            differ += (h != id) as usize;
        }
    }
    let (chi2, df) = chi_square(&c, &counts, n);
    let (host_chi2, _) = chi_square(&c, &host_counts, n);
    let bound = chi_square_bound(df);
    eprintln!(
        "{name}: {n} graph draws, chi-square {chi2:.1} (host {host_chi2:.1}) on {df} degrees of freedom, bound {bound:.1}; {differ} draws differ from the host's"
    );
    assert!(
        chi2 <= bound,
        "{name}: graph chi-square {chi2:.1} > {bound:.1}"
    );
    assert!(
        host_chi2 <= bound,
        "{name}: host chi-square {host_chi2:.1} > {bound:.1}"
    );
    // The same uniform number walks the same candidates in the same order on both sides; a
    // draw can differ only where u·total falls between the two sides' roundings of one
    // cumulative weight (about 1e-7 of the mass).
    assert!(
        differ * 1000 <= n,
        "{name}: {differ} of {n} draws differ from the host's"
    );
}

#[test]
fn graph_draws_follow_the_official_audio_defaults() {
    // Top-p 0.9 at temperature 0.5 with the penalty on: 10 candidates.
    check_graph_law("audio_default", 10_000, 2_000);
}

#[test]
fn graph_draws_follow_top_k() {
    // Top-k 20, no penalty.
    check_graph_law("top_k_only", 10_000, 2_000);
}

#[test]
fn graph_draws_follow_plain_sampling_with_and_without_penalty() {
    // The whole vocabulary of 2050, no penalty and penalty 1.2 with repeats in the window.
    check_graph_law("plain", 10_000, 2_000);
    check_graph_law("plain_penalty_repeats", 10_000, 2_000);
}

#[test]
fn graph_draws_follow_a_wide_nucleus() {
    // Top-p 0.8 at temperature 1.5 (365 candidates), top-k ignored, penalty on.
    check_graph_law("top_p_wide_top_k_ignored", 10_000, 2_000);
}

#[test]
fn graph_draws_of_the_text_vocabulary() {
    // The official text defaults (temperature 0.01: one candidate) and top-k 40 with the
    // penalty over the full text vocabulary of 152064. Each draw sorts the whole vocabulary
    // on the CPU, so these take fewer draws: 2000 over 40 candidates still put 50 expected
    // draws in each bin.
    check_graph_law("text_default", 200, 100);
    check_graph_law("text_top_k_penalty", 2_000, 250);
}

/// Logits with no candidate (all -inf, or NaN): the token stays inside the vocabulary and the
/// check value says so (not finite, or not positive), in every mode, so that the caller can
/// refuse it with one clear error.
#[test]
fn graph_draw_without_a_candidate_is_flagged() {
    let base = case("top_k_only");
    for fill in [f32::NEG_INFINITY, f32::NAN] {
        for params in [
            SamplingParams {
                temperature: 0.0,
                ..base.params
            },
            case("audio_default").params,
            base.params,
            case("plain").params,
        ] {
            let mut c = case("top_k_only");
            c.logits.fill(fill);
            let (got, check) = graph_draws(&c, params, &[0.25, 0.75]);
            for (&t, &k) in got.iter().zip(&check) {
                assert!(
                    (0..c.logits.len() as i32).contains(&t),
                    "{params:?}, {fill}: token {t}"
                );
                // What the depth transformer accepts: a finite logit when greedy, a finite
                // positive total weight when sampling.
                let accepted = k.is_finite() && (params.is_greedy() || k > 0.0);
                assert!(!accepted, "{params:?}, {fill}: check {k}");
            }
        }
    }
}
