//! What one graph node costs beyond its work on ggml's CPU backend: a chain of small `scale`
//! nodes (1024 floats each), so the time is dispatch and the barrier between nodes.
//!
//!   cargo run --release -p flm-kernels --example node_overhead -- [THREADS] [NODES]

mod probe;

use anyhow::Result;
use flm_kernels::ggml::{self, Backend, Graph};

use probe::{arg, seconds_per_run};

fn main() -> Result<()> {
    let threads = arg(1, std::thread::available_parallelism()?.get())?;
    let nodes = arg(2, 800)?;
    let width = 1024;
    let backend = Backend::cpu(threads)?;
    let mut graph = Graph::new(nodes + 8);
    let x = graph.ctx.new_tensor(ggml::F32, &[width, 1]).set_input();
    let mut h = x;
    for _ in 0..nodes {
        h = graph.ctx.scale(h, 1.0);
    }
    graph.expand(h);
    graph.allocate(&backend)?;
    x.write(&vec![1.0f32; width as usize]);
    let us = seconds_per_run(&mut graph, &backend, 50, 500)? * 1e6;
    println!(
        "{threads} threads, {nodes} nodes: {us:.1} us per graph, {:.3} us per node",
        us / nodes as f64
    );
    Ok(())
}
