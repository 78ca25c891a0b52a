//! `flm-edge inspect`: the metadata and tensors of GGUF files, or of a model folder's three.

use std::path::PathBuf;

use anyhow::Result;
use flm_conversion::Gguf;
use flm_edge::inspect::render;
use flm_edge::model_dir::ModelDir;

#[derive(clap::Args)]
pub struct Args {
    #[arg(required = true, value_name = "FILE.gguf|MODEL_DIR")]
    paths: Vec<PathBuf>,
}

pub fn exec(a: Args) -> Result<()> {
    for p in a.paths {
        if p.is_dir() {
            let m = ModelDir::open(&p)?;
            println!("model folder {} (model id {})", p.display(), m.model_id);
            for (name, g) in [
                ("backbone.gguf", &m.backbone),
                ("audio.gguf", &m.audio),
                ("mimi.gguf", &m.mimi),
            ] {
                println!("\n== {}\n{}", m.path(name).display(), render(g));
            }
        } else {
            let g = Gguf::open(&p)?;
            println!("== {}\n{}", p.display(), render(&g));
        }
    }
    Ok(())
}
