//! `flm-edge devices`: the sound devices and the compute devices of this build.

use anyhow::Result;

pub fn exec() -> Result<()> {
    print!("{}", flm_edge::serve::alsa_io::list_devices()?);
    println!("\ncompute devices (--backend, `backend`):");
    for d in flm_kernels::device::list() {
        println!(
            "  {:<8} {:?}  {}  {:.1} GiB",
            d.name,
            d.kind,
            d.description,
            d.memory_total as f64 / (1u64 << 30) as f64
        );
    }
    Ok(())
}
