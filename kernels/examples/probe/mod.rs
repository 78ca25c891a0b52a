//! What the probes share: their arguments and the timing of a built graph.

use anyhow::{Context, Result};
use flm_kernels::ggml::{Backend, Graph};

/// Positional argument `i`, or `default` when absent.
pub fn arg(i: usize, default: usize) -> Result<usize> {
    std::env::args().nth(i).map_or(Ok(default), |s| {
        s.parse().with_context(|| format!("argument {i}: {s}"))
    })
}

/// Seconds per compute of an allocated graph, averaged over `reps` after `warm` untimed runs.
pub fn seconds_per_run(
    graph: &mut Graph,
    backend: &Backend,
    warm: usize,
    reps: usize,
) -> Result<f64> {
    for _ in 0..warm {
        graph.compute(backend)?;
    }
    let t = std::time::Instant::now();
    for _ in 0..reps {
        graph.compute(backend)?;
    }
    Ok(t.elapsed().as_secs_f64() / reps as f64)
}
