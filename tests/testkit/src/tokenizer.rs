//! The FLM-Audio tokenizer files: Qwen2's tokenizer with the wait token added at 151665.

use std::io::Read;
use std::path::Path;

use anyhow::{Context, Result};
use serde_json::{Value, json};

pub const WAIT_TOKEN_ID: u64 = 151665;
pub const WAIT_TOKEN: &str = "<wait>";
/// Last id of Qwen2.5's own added tokens (`<|file_sep|>`).
const LAST_QWEN25_ID: u64 = 151664;

static TOKENIZER_JSON_GZ: &[u8] = include_bytes!("../../data/qwen2-tokenizer/tokenizer.json.gz");
static TOKENIZER_CONFIG: &str = include_str!("../../data/qwen2-tokenizer/tokenizer_config.json");

fn wait_entry() -> Value {
    json!({"id": WAIT_TOKEN_ID, "content": WAIT_TOKEN, "single_word": false, "lstrip": false,
           "rstrip": false, "normalized": false, "special": true})
}

/// The FLM `tokenizer.json` text.
pub fn tokenizer_json() -> Result<String> {
    let mut text = String::new();
    flate2::read::GzDecoder::new(TOKENIZER_JSON_GZ).read_to_string(&mut text)?;
    let mut v: Value = serde_json::from_str(&text)?;
    let added = v["added_tokens"]
        .as_array_mut()
        .context("no added_tokens")?;
    added.retain(|t| t["id"].as_u64().is_some_and(|id| id <= LAST_QWEN25_ID));
    added.push(wait_entry());
    Ok(serde_json::to_string(&v)?)
}

/// Writes `tokenizer.json` and `tokenizer_config.json` into `dir`.
pub fn write(dir: &Path) -> Result<()> {
    std::fs::write(dir.join("tokenizer.json"), tokenizer_json()?)?;
    let mut cfg: Value = serde_json::from_str(TOKENIZER_CONFIG)?;
    if let Some(map) = cfg["added_tokens_decoder"].as_object_mut() {
        map.retain(|id, _| id.parse::<u64>().is_ok_and(|id| id <= LAST_QWEN25_ID));
        let mut e = wait_entry();
        e.as_object_mut().unwrap().remove("id");
        map.insert(WAIT_TOKEN_ID.to_string(), e);
    }
    std::fs::write(
        dir.join("tokenizer_config.json"),
        serde_json::to_string_pretty(&cfg)?,
    )?;
    Ok(())
}
