//! flm-edge compute on ggml: the backbone, the depth transformer, sampling, the Mimi codec.

pub mod backbone;
pub mod depformer;
pub mod device;
pub mod ggml;
pub mod log;
pub mod mimi;
pub mod sample_graph;
pub mod sampling;
pub mod staging;
pub mod weights;
