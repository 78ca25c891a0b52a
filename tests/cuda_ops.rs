//! The graphs of Mimi, the backbone and the depth transformer use only op types that the CUDA backend of
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
    ops.extend(backbone_ops(&dir));
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
        "MUL_MAT", "SET_ROWS", "ROPE", "SOFT_MAX", "IM2COL", "ARGMAX", "ARGSORT", "CUMSUM", "EXP",
    ] {
        assert!(
            ops.iter().any(|o| o == op),
            "no {op} in {} nodes",
            ops.len()
        );
    }
}

/// The ops of the backbone's step graph with the text draw of the model's defaults (top-p and
/// the penalty), as a device runs it.
fn backbone_ops(dir: &flm_edge::model_dir::ModelDir) -> Vec<String> {
    use flm_kernels::backbone::{Backbone, BackboneOptions};
    use flm_kernels::ggml::Backend;
    let cpu = Backend::new(Device::Cpu, 1).unwrap();
    let opts = BackboneOptions {
        positions: 512,
        kv_f32: false,
        streams: 1,
    };
    let mut backbone = Backbone::load(&dir.path("backbone.gguf"), &cpu, opts).unwrap();
    let s = flm_edge::engine::Sampling::from_model(&dir.audio, "audio.gguf").unwrap();
    backbone.configure(&cpu, Some(s.text)).unwrap();
    backbone.op_names()
}
