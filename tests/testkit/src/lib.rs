//! Seeded checkpoints in the exact formats of the FLM-Audio release: a Hugging Face model
//! folder (config.json, tokenizer files, bf16 safetensors, optionally sharded) and a Mimi
//! safetensors file. Tests and benchmarks start from these, on the same path a user takes.
//!
//! Every tensor is drawn from its own generator, seeded from the run seed and the tensor's
//! name, so a tensor's values do not depend on which others are written or in what order.

pub mod lm;
pub mod mimi;
pub mod rng;
pub mod safetensors_out;
pub mod tokenizer;

pub use lm::{LmSpec, write_lm};
pub use mimi::{write_mimi, write_silent_mimi};
