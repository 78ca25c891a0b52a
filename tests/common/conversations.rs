//! Several conversations stepped together against each alone, shared by the CPU's tests
//! (tests/conversations_in_one_step.rs) and the Vulkan backend's (tests/vulkan.rs).

use flm_edge::engine::{Engine, EngineOptions, Sampling, StepOutput};
use flm_edge::model_dir::ModelDir;
use flm_kernels::ggml::Device;

use super::converted;

/// The user's codes of conversation `c` at its step t (different for each conversation).
pub fn user(c: usize, t: usize) -> [i32; 8] {
    std::array::from_fn(|q| ((t * 7919 + q * 104_729 + c * 3_571) % 2048) as i32)
}

pub fn options(dir: &ModelDir, greedy: bool, context: u32, device: Device) -> EngineOptions {
    let mut sampling = Sampling::from_model(&dir.audio, "audio.gguf").unwrap();
    if greedy {
        sampling = sampling.greedy();
    }
    EngineOptions {
        device,
        threads: 1,
        sampling,
        seed: 7,
        context: Some(context),
        sink: 8,
        kv_f32: None,
    }
}

/// Conversation `c` alone for `steps` steps: text, codes and the frame of each.
pub fn alone(dir: &ModelDir, opts: &EngineOptions, c: usize, steps: usize) -> Vec<StepOutput> {
    let mut e = Engine::load(dir, opts).unwrap();
    (0..steps).map(|t| e.step(&user(c, t)).unwrap()).collect()
}

pub fn same(a: &StepOutput, b: &StepOutput) -> bool {
    a.text == b.text && a.audio == b.audio && a.frame == b.frame
}

/// How long conversations run together, in a context of how many steps (with a sink of 8).
pub struct Run {
    pub context: u32,
    pub steps: usize,
}

/// Conversations in one step starting at `starts` (steps), the third reset at step 30 (it
/// starts over): each shifts its context at its own steps, and must draw exactly what it
/// draws alone.
pub fn together(quant: &str, greedy: bool, device: Device, starts: &[usize], run: Run) {
    let dir = ModelDir::open(converted(3, quant)).unwrap();
    let Run { context, steps } = run;
    let opts = options(&dir, greedy, context, device);
    let n = starts.len();
    let restart = 30;
    let mut e = Engine::with_conversations(&dir, &opts, n).unwrap();
    let solo: Vec<Vec<StepOutput>> = (0..n).map(|c| alone(&dir, &opts, c, steps)).collect();
    let mut shifts = vec![0usize; n];
    for t in 0..steps {
        for (c, &s) in starts.iter().enumerate() {
            if t == s || (c == 2 && t == restart) {
                e.reset_conversation(c);
            }
        }
        // Conversation c's own step count: steps since its (re)start.
        let own = |c: usize| {
            let from = if c == 2 && t >= restart {
                restart
            } else {
                starts[c]
            };
            t.checked_sub(from)
        };
        let users: Vec<[i32; 8]> = (0..n).map(|c| user(c, own(c).unwrap_or(t))).collect();
        let outs = e.step_all(&users).unwrap().to_vec();
        for c in 0..n {
            let Some(k) = own(c) else { continue };
            shifts[c] += outs[c].context_shifted as usize;
            assert!(
                same(&outs[c], &solo[c][k]),
                "conversation {c}, its step {k} (step {t} together): {:?} alone, {:?} together",
                (solo[c][k].text, solo[c][k].audio),
                (outs[c].text, outs[c].audio)
            );
        }
    }
    // Each conversation shifted its context, at its own steps.
    assert!(shifts.iter().all(|&n| n >= 1), "{shifts:?}");
}
