//! How fast ggml's CPU backend streams f32 weights through the products with one or two
//! columns that dominate a Mimi frame (both transformers run two steps per frame). The
//! weights (8 MiB per layer pair, 512 × 2048 and back) are far larger than the caches, so
//! this is the memory floor of a frame: weight bytes / this rate.
//!
//!   cargo run --release -p flm-kernels --example weight_stream -- [THREADS] [LAYERS] [COLUMNS]

mod probe;

use anyhow::Result;
use flm_kernels::ggml::{self, Backend, Buffer, Ctx, Graph};

use probe::{arg, seconds_per_run};

fn main() -> Result<()> {
    let threads = arg(1, std::thread::available_parallelism()?.get())?;
    let layers = arg(2, 40)?;
    let columns = arg(3, 2)? as i64;
    let (d, ff) = (512i64, 2048i64);
    let backend = Backend::cpu(threads)?;
    let weights = Ctx::new(2 * layers, 0);
    let pairs: Vec<_> = (0..layers)
        .map(|_| {
            (
                weights.new_tensor(ggml::F32, &[d, ff]),
                weights.new_tensor(ggml::F32, &[ff, d]),
            )
        })
        .collect();
    let _buffer = Buffer::alloc(&weights, &backend)?;
    let fill = vec![1e-3f32; (d * ff) as usize];
    for (up, down) in &pairs {
        up.write(&fill);
        down.write(&fill);
    }
    let mut graph = Graph::new(4 * layers + 8);
    let x = graph.ctx.new_tensor(ggml::F32, &[d, columns]).set_input();
    let mut h = x;
    for (up, down) in &pairs {
        h = graph.ctx.mul_mat(*down, graph.ctx.mul_mat(*up, h));
    }
    graph.expand(h);
    graph.allocate(&backend)?;
    x.write(&vec![1.0f32; (d * columns) as usize]);
    let s = seconds_per_run(&mut graph, &backend, 5, 30)?;
    let bytes = (layers as i64 * 2 * d * ff * 4) as f64;
    println!(
        "{threads} threads, {columns} columns, {:.0} MB of f32 weights: {:.2} ms, {:.1} GB/s",
        bytes / 1e6,
        s * 1e3,
        bytes / s / 1e9
    );
    Ok(())
}
