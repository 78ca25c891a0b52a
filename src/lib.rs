//! flm-edge: the FLM-Audio full-duplex spoken-dialog model on edge boards.

pub mod backbone;
pub mod inspect;
pub mod model_dir;
