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
    let mut engine = engine(&dir, true, None, 16);
    ops.extend(engine.depformer().op_names());
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
        "MUL_MAT", "SET_ROWS", "ROPE", "SOFT_MAX", "IM2COL", "ARGMAX",
    ] {
        assert!(
            ops.iter().any(|o| o == op),
            "no {op} in {} nodes",
            ops.len()
        );
    }
}
