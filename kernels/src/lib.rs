//! flm-edge compute on ggml: the Mimi codec, the depth transformer, sampling.

pub mod depformer;
pub mod device;
pub mod ggml;
pub mod log;
pub mod mimi;
pub mod sample_graph;
pub mod sampling;
pub mod staging;
pub mod weights;
