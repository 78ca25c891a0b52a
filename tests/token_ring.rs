//! The token ring driven with the golden run of the LM reference (tests/golden/lm): the
//! columns it hands out must be the reference's inputs, step for step.

mod common;

use std::path::Path;

use common::GOLDEN_MIMI;
use flm_edge::token_ring::{CODEBOOKS, Column, InitialTokens, STREAMS, TokenRing};

const GOLDEN_LM: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/golden/lm");

/// FLM-Audio's delays: text, speaking 0..7, listening 0..7 (acoustic codebooks lag by one).
const DELAYS: [usize; STREAMS] = [0, 0, 1, 1, 1, 1, 1, 1, 1, 0, 1, 1, 1, 1, 1, 1, 1];
const INIT: InitialTokens = InitialTokens {
    text_wait: 151665,
    audio_pad: 2048,
};

fn npy_i32(name: &str) -> Vec<i32> {
    let bytes = std::fs::read(Path::new(GOLDEN_LM).join(name)).unwrap();
    npyz::NpyFile::new(&bytes[..]).unwrap().into_vec().unwrap()
}

struct Golden {
    user: Vec<[i32; CODEBOOKS]>,
    /// Text, then speaking codebooks 0..7, sampled at step t.
    tokens: Vec<[i32; 1 + CODEBOOKS]>,
    /// The 17 ids the reference read at step t.
    inputs: Vec<Column>,
}

fn golden() -> Golden {
    let codes = flm_edge::codes_npy::read(&Path::new(GOLDEN_MIMI).join("codes.npy")).unwrap();
    let g = Golden {
        user: codes
            .chunks_exact(CODEBOOKS)
            .map(|c| c.try_into().unwrap())
            .collect(),
        tokens: npy_i32("tokens.npy")
            .chunks_exact(1 + CODEBOOKS)
            .map(|c| c.try_into().unwrap())
            .collect(),
        inputs: npy_i32("inputs.npy")
            .chunks_exact(STREAMS)
            .map(|c| c.try_into().unwrap())
            .collect(),
    };
    assert_eq!(g.tokens.len(), 139);
    assert_eq!(g.inputs.len(), 139);
    assert!(g.user.len() >= g.tokens.len());
    g
}

/// Runs the golden steps from the ring's current state; returns the output frames.
fn drive(ring: &mut TokenRing, g: &Golden) -> Vec<Option<[i32; 1 + CODEBOOKS]>> {
    let mut outputs = vec![];
    for (t, tok) in g.tokens.iter().enumerate() {
        assert_eq!(ring.step(), t);
        ring.push_user(&g.user[t]);
        assert_eq!(ring.input(), g.inputs[t], "input column of step {t}");
        outputs.push(ring.push_model(tok[0], tok[1..].try_into().unwrap()));
    }
    outputs
}

#[test]
fn columns_match_the_reference_inputs() {
    let g = golden();
    let mut ring = TokenRing::new(&DELAYS, INIT).unwrap();
    drive(&mut ring, &g);
    // Again after a reset: nothing of the first run may leak into the new one.
    ring.reset(INIT);
    drive(&mut ring, &g);
}

#[test]
fn output_frames_follow_the_official_alignment() {
    let g = golden();
    let mut ring = TokenRing::new(&DELAYS, INIT).unwrap();
    let outputs = drive(&mut ring, &g);
    assert_eq!(outputs[0], None, "no frame after the first step");
    for (t, out) in outputs.iter().enumerate().skip(1) {
        let out = out.unwrap_or_else(|| panic!("no frame after step {t}"));
        // Text and semantic code of step t-1, acoustic codes of step t: codebooks 1..7 are
        // sampled one step after the semantic code they go with.
        let (prev, cur) = (&g.tokens[t - 1], &g.tokens[t]);
        let mut want = *cur;
        want[..2].copy_from_slice(&prev[..2]);
        assert_eq!(out, want, "output frame after step {t}");
    }
}
