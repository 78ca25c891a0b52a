//! flm-edge: the FLM-Audio full-duplex spoken-dialog model on edge boards.

pub mod backbone;
pub mod bench;
pub mod codes_npy;
pub mod files;
pub mod inspect;
pub mod model_dir;
pub mod wav;
