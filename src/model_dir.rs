//! A converted model folder: the three GGUF files, checked to belong together.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail, ensure};
use flm_conversion::Gguf;
use flm_conversion::model_files::{
    AUDIO_ARCH, AUDIO_FILE, BACKBONE_FILE, KEY_MODEL_ID, MIMI_ARCH, MIMI_FILE,
};

pub struct ModelDir {
    pub dir: PathBuf,
    pub model_id: String,
    pub backbone: Gguf,
    pub audio: Gguf,
    pub mimi: Gguf,
}

impl ModelDir {
    /// Reads the headers of the three files and checks their architectures and model ids.
    pub fn open(dir: &Path) -> Result<ModelDir> {
        ensure!(
            dir.is_dir(),
            "{}: not a model folder (run `flm-edge convert` to make one)",
            dir.display()
        );
        let open = |name: &str, arch: &str| -> Result<Gguf> {
            let path = dir.join(name);
            ensure!(
                path.is_file(),
                "{}: missing (a model folder holds {BACKBONE_FILE}, {AUDIO_FILE} and {MIMI_FILE})",
                path.display()
            );
            let g = Gguf::open(&path)?;
            let a = g
                .get_str("general.architecture")
                .with_context(|| path.display().to_string())?;
            ensure!(
                a == arch,
                "{}: architecture is `{a}`, expected `{arch}`",
                path.display()
            );
            Ok(g)
        };
        let backbone = open(BACKBONE_FILE, "qwen2")?;
        let audio = open(AUDIO_FILE, AUDIO_ARCH)?;
        let mimi = open(MIMI_FILE, MIMI_ARCH)?;
        let id_of = |g: &Gguf, name: &str| -> Result<String> {
            Ok(g.get_str(KEY_MODEL_ID)
                .with_context(|| {
                    format!("{}: not converted by flm-edge", dir.join(name).display())
                })?
                .to_string())
        };
        let model_id = id_of(&audio, AUDIO_FILE)?;
        for (g, name) in [(&backbone, BACKBONE_FILE), (&mimi, MIMI_FILE)] {
            let id = id_of(g, name)?;
            if id != model_id {
                bail!(
                    "{}: model id {id} does not match {AUDIO_FILE} ({model_id}): the files come from different conversions",
                    dir.join(name).display()
                );
            }
        }
        Ok(ModelDir {
            dir: dir.to_path_buf(),
            model_id,
            backbone,
            audio,
            mimi,
        })
    }

    pub fn path(&self, file: &str) -> PathBuf {
        self.dir.join(file)
    }
}
