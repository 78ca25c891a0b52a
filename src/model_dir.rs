//! A converted model folder: the three GGUF files, checked to belong together.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail, ensure};
use flm_conversion::Gguf;
use flm_conversion::gguf::{Array, Value};
use flm_conversion::model_files::audio_keys;
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
        check_backbone(&backbone, &audio)
            .with_context(|| dir.join(BACKBONE_FILE).display().to_string())?;
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

/// What llama.cpp asserts on (and aborts the process for) rather than reporting: checked here
/// first so that a damaged backbone is one error line. The shapes of the tensors llama.cpp
/// checks itself.
fn check_backbone(g: &Gguf, audio: &Gguf) -> Result<()> {
    let int = |k: &str| -> Result<u64> { g.get_u64(&format!("qwen2.{k}")) };
    let layers = int("block_count")?;
    // llama.cpp's LLAMA_MAX_LAYERS.
    ensure!(
        (1..=512).contains(&layers),
        "qwen2.block_count is {layers}, expected 1..=512"
    );
    let (embd, heads, kv_heads) = (
        int("embedding_length")?,
        int("attention.head_count")?,
        int("attention.head_count_kv")?,
    );
    ensure!(
        heads > 0 && kv_heads > 0 && heads % kv_heads == 0 && embd % heads == 0,
        "attention heads ({heads}, {kv_heads} for keys and values) do not divide the embedding ({embd})"
    );
    ensure!(
        int("feed_forward_length")? > 0 && int("context_length")? > 0,
        "qwen2.feed_forward_length and qwen2.context_length must be positive"
    );
    let want = audio.get_u64(audio_keys::EMBEDDING_LENGTH)?;
    ensure!(
        embd == want,
        "qwen2.embedding_length is {embd}, but {AUDIO_FILE} embeds into {want}"
    );
    for k in ["attention.layer_norm_rms_epsilon", "rope.freq_base"] {
        let v = g.get_f64(&format!("qwen2.{k}"))?;
        ensure!(
            v.is_finite() && v > 0.0,
            "qwen2.{k} is {v}, expected a positive number"
        );
    }
    // The vocabulary: token texts unique (llama.cpp maps text to id), per-token arrays as long
    // as the token list (llama.cpp indexes them unchecked).
    let Some(Value::Array(Array::Str(tokens))) = g.get("tokenizer.ggml.tokens") else {
        bail!("tokenizer.ggml.tokens is missing or not a list of strings");
    };
    let mut seen = std::collections::HashSet::with_capacity(tokens.len());
    for (i, t) in tokens.iter().enumerate() {
        // llama.cpp renames an empty token so.
        let text = if t.is_empty() {
            std::borrow::Cow::Owned(format!("[EMPTY_{i}]"))
        } else {
            std::borrow::Cow::Borrowed(t.as_str())
        };
        ensure!(
            seen.insert(text),
            "tokenizer.ggml.tokens: token {i} ({t:?}) appears twice"
        );
    }
    for k in ["tokenizer.ggml.token_type", "tokenizer.ggml.scores"] {
        if let Some(v) = g.get(k) {
            let n = match v {
                Value::Array(a) => a.len(),
                _ => bail!("{k} is not a list"),
            };
            ensure!(
                n == tokens.len(),
                "{k} has {n} entries for {} tokens",
                tokens.len()
            );
        }
    }
    Ok(())
}
