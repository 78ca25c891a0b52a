//! The context policy: the backbone keeps running past its context (8192 steps for the
//! release), keeping the first steps as an attention sink and dropping the oldest half of
//! the rest whenever the KV cache is full.

mod common;

use common::*;
use flm_edge::engine::{Engine, EngineOptions, Sampling};
use flm_edge::model_dir::ModelDir;

/// The seed-5 tiny model at q8_0.
fn model() -> ModelDir {
    ModelDir::open(converted(5, "q8_0")).unwrap()
}

/// Pseudo-random user codes for step t.
fn user(t: usize) -> [i32; 8] {
    std::array::from_fn(|q| ((t * 7919 + q * 104_729) % 2048) as i32)
}

/// Runs `steps` steps and returns the steps at which old context was dropped.
fn run(engine: &mut Engine, steps: usize) -> Vec<usize> {
    let positions = engine.policy().positions as i32;
    let mut shifts = vec![];
    for t in 0..steps {
        let out = engine.step(&user(t)).unwrap();
        if out.context_shifted {
            shifts.push(t);
        }
        assert!(out.audio.iter().all(|&c| (0..2048).contains(&c)));
        assert!(out.text >= 0 && out.text < 152_064);
        let max = engine.max_cached_position();
        assert!(max < positions, "step {t}: position {max} cached");
        assert_eq!(max, engine.position() - 1, "step {t}");
    }
    shifts
}

#[test]
fn small_context_drops_the_oldest_half_after_the_sink() {
    let dir = model();
    // Greedy keeps the long runs quick (no softmax over the text vocabulary).
    let mut e = engine(&dir, true, Some(64), 8);
    // Full at 64; each shift drops (64 - 8) / 2 = 28 steps, so it refills every 28 steps.
    let shifts = run(&mut e, 200);
    assert_eq!(shifts, vec![64, 92, 120, 148, 176]);
    assert_eq!(e.position(), 64 - 28 + (200 - 176));
}

#[test]
fn runs_past_the_trained_context() {
    let dir = model();
    let mut e = engine(&dir, true, None, 16);
    assert_eq!(e.policy().positions, 8192);
    let shifts = run(&mut e, 8192 + 300);
    assert_eq!(shifts, vec![8192]);
    assert_eq!(e.position(), 8192 - (8192 - 16) / 2 + 300);
}

#[test]
fn a_context_past_the_trained_one_is_refused() {
    let dir = model();
    let sampling = Sampling::from_model(&dir.audio, "audio.gguf").unwrap();
    let r = Engine::load(
        &dir,
        &EngineOptions {
            device: Default::default(),
            threads: 1,
            sampling,
            seed: 5,
            context: Some(9000),
            sink: 16,
            kv_f32: None,
        },
    );
    let err = format!("{:#}", r.err().expect("must fail"));
    assert!(err.contains("8192"), "{err}");
}
