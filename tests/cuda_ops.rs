//! The graphs of Mimi and the depth transformer use only op types that the CUDA backend of
//! the pinned ggml implements, so that the same graphs run on a Jetson GPU (`--features
//! cuda`). Checked on the CPU: the list in `flm_kernels::ggml::CUDA_OPS` is read off
//! ggml-cuda.cu.

mod common;

use common::*;
use flm_kernels::ggml::{CUDA_OPS, Device};
use flm_kernels::mimi::Mimi;

#[test]
fn our_graphs_use_only_ops_the_cuda_backend_implements() {
    let dir = flm_edge::model_dir::ModelDir::open(converted(3, "f32")).unwrap();
    let mut mimi = Mimi::load(&dir.path("mimi.gguf"), Device::Cpu, 1).unwrap();
    let mut ops = mimi.op_names().unwrap();
    // The step graphs of greedy and sampled codes (top-p with the penalty: the model's
    // defaults; top-k and plain sampling), and the text draw over the text vocabulary.
    for greedy in [true, false] {
        let mut engine = engine(&dir, greedy, None, 16);
        ops.extend(engine.depformer().op_names());
        let mut s = engine.sampling();
        for (top_p, top_k) in [(0.0, 40), (0.0, 0)] {
            s.audio.top_p = top_p;
            s.audio.top_k = top_k;
            engine.set_sampling(s).unwrap();
            ops.extend(engine.depformer().op_names());
        }
    }
    ops.extend(text_draw_ops());
    let mut missing: Vec<&String> = ops
        .iter()
        .filter(|o| !CUDA_OPS.contains(&o.as_str()))
        .collect();
    missing.sort();
    missing.dedup();
    assert!(
        missing.is_empty(),
        "ops the CUDA backend lacks: {missing:?}"
    );
    // The graphs were really walked: their main ops are there.
    for op in [
        "MUL_MAT", "SET_ROWS", "ROPE", "SOFT_MAX", "IM2COL", "ARGMAX", "ARGSORT", "CUMSUM",
    ] {
        assert!(
            ops.iter().any(|o| o == op),
            "no {op} in {} nodes",
            ops.len()
        );
    }
}

/// The ops of the text draw (`sample_graph` over a row of the text vocabulary, with the
/// official defaults: top-p and the penalty), as llama.cpp's graph holds them on a device.
fn text_draw_ops() -> Vec<String> {
    use flm_kernels::ggml::{F32, Graph, I32};
    use flm_kernels::sample_graph::{self, DrawInputs};
    use flm_kernels::sampling::SamplingParams;
    let graph = Graph::new(256);
    let g = &graph.ctx;
    let logits = g.new_tensor(F32, &[151_666, 1]);
    let input = g.new_tensor(F32, &[52]);
    let params = SamplingParams {
        temperature: 0.01,
        top_p: 0.9,
        top_k: 1,
        repetition_penalty: 1.03,
        repetition_window: 50,
    };
    let draw = sample_graph::build(
        g,
        logits,
        &params,
        &DrawInputs {
            window: Some(g.reshape(g.cast(g.view(input, &[50], &[], 0), I32), &[50, 1])),
            uniform: g.view(input, &[1, 1], &[4], 200),
            penalty: Some(g.view(input, &[1], &[], 204)),
            mask: None,
        },
    );
    graph.expand(draw.token);
    graph.expand(draw.check);
    graph.op_names()
}
