//! Model files of flm-edge: reading the released safetensors checkpoints and writing (and
//! reading) the GGUF files that the runtime and llama.cpp load.

pub mod checkpoint;
pub mod convert;
pub mod ggml_type;
pub mod gguf;
pub mod hf_config;
pub mod mimi_layout;
pub mod model_files;
mod pages;
pub mod plan;
pub mod quant;
pub mod tokenizer;

pub use convert::{ConvertOptions, Summary, convert};
pub use ggml_type::GgmlType;
pub use gguf::Gguf;
pub use quant::{MimiDtype, Quant};
