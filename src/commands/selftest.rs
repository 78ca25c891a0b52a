//! `flm-edge selftest`: does a device compute what the CPU computes?

use anyhow::Result;
use flm_edge::engine::Device;
use flm_edge::selftest::{SelftestOptions, selftest};

use super::threads;

#[derive(clap::Args)]
pub struct Args {
    /// The device under test: cpu, cuda, vulkan, gpu, or a device such as cuda0.
    #[arg(long, default_value = "gpu")]
    pub backend: Device,
    /// The device it is compared with.
    #[arg(long, default_value = "cpu")]
    reference: Device,
    /// Steps of the language model (80 ms frames of the test clip).
    #[arg(long, default_value_t = 50)]
    steps: usize,
    /// CPU threads (default: all cores).
    #[arg(long)]
    threads: Option<usize>,
    /// Seed of the test model's weights.
    #[arg(long, default_value_t = 3)]
    seed: u64,
}

pub fn exec(a: Args) -> Result<()> {
    let checks = selftest(&SelftestOptions {
        device: a.backend,
        reference: a.reference,
        steps: a.steps,
        threads: threads(a.threads),
        seed: a.seed,
    })?;
    let (backend, reference, steps, seed) = (a.backend, a.reference, a.steps, a.seed);
    println!(
        "selftest: {backend} against {reference}, {steps} steps, f32, q8_0, q4_k and q3_k weights, seed {seed}"
    );
    for c in &checks {
        println!("{c}");
    }
    let failed = checks.iter().filter(|c| !c.pass).count();
    if failed > 0 {
        anyhow::bail!("selftest: {failed} of {} checks failed", checks.len());
    }
    println!("selftest: all {} checks passed", checks.len());
    Ok(())
}
