//! flm-edge: the FLM-Audio full-duplex spoken-dialog model on edge boards.

pub mod bench;
pub mod codes_npy;
pub mod config;
pub mod detok;
pub mod echo;
pub mod embed;
pub mod engine;
pub mod files;
pub mod inspect;
pub mod llama;
pub mod model_dir;
pub mod placement;
pub mod remote;
pub mod resident;
pub mod run;
pub mod selftest;
pub mod serve;
pub mod token_ring;
pub mod wav;

/// Threads for compute: every core the process may use.
pub fn default_threads() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}
