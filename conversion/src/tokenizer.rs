//! The Qwen2 byte-level BPE tokenizer of `tokenizer.json`, as llama.cpp's GGUF vocabulary
//! (`tokenizer.ggml.*`), so that stock llama.cpp tools can load the backbone file with text.

use std::path::Path;

use anyhow::{Context, Result, bail, ensure};

use crate::gguf::{Array, GgufBuilder, Value};

/// llama.cpp token types (enum llama_token_type).
const TOKEN_NORMAL: i32 = 1;
const TOKEN_CONTROL: i32 = 3;
/// Token texts llama.cpp expects to be control tokens (its end-of-text and FIM lists).
const CONTROL_LOOKING: [&str; 9] = [
    "<|repo_name|>",
    "</s>",
    "<|endoftext|>",
    "<|im_end|>",
    "<|fim_prefix|>",
    "<|fim_suffix|>",
    "<|fim_middle|>",
    "<|fim_pad|>",
    "<|file_sep|>",
];
const TOKEN_USER_DEFINED: i32 = 4;
const TOKEN_UNUSED: i32 = 5;

pub struct Vocab {
    /// The file's text, carried verbatim into the audio file for the runtime's detokenizer.
    pub json_text: String,
    pub tokens: Vec<String>,
    pub types: Vec<i32>,
    pub merges: Vec<String>,
}

impl Vocab {
    /// Reads `tokenizer.json` and lays its vocabulary out over `n_vocab` ids (the model's
    /// embedding rows; ids with no token become `[PAD<id>]`, as llama.cpp's converter does).
    pub fn load(path: &Path, n_vocab: usize) -> Result<Vocab> {
        let label = path.display();
        let json_text =
            std::fs::read_to_string(path).with_context(|| format!("{label}: cannot read"))?;
        let json: serde_json::Value =
            serde_json::from_str(&json_text).with_context(|| format!("{label}: invalid JSON"))?;
        Self::from_json(&json, n_vocab)
            .map(|(tokens, types, merges)| Vocab {
                json_text,
                tokens,
                types,
                merges,
            })
            .with_context(|| format!("{label}: bad tokenizer"))
    }

    fn from_json(
        json: &serde_json::Value,
        n_vocab: usize,
    ) -> Result<(Vec<String>, Vec<i32>, Vec<String>)> {
        let model = json.get("model").context("no `model`")?;
        let ty = model.get("type").and_then(|t| t.as_str()).unwrap_or("");
        ensure!(ty == "BPE", "model type `{ty}` is not BPE");
        let vocab = model
            .get("vocab")
            .and_then(|v| v.as_object())
            .context("no `model.vocab` object")?;
        let mut tokens: Vec<Option<String>> = vec![None; n_vocab];
        let mut types = vec![TOKEN_UNUSED; n_vocab];
        let mut place = |id: u64, text: &str, ty: i32| -> Result<()> {
            let id = id as usize;
            ensure!(
                id < n_vocab,
                "token `{text}` has id {id}, beyond the model's {n_vocab} embedding rows"
            );
            tokens[id] = Some(text.to_string());
            // llama.cpp treats these as end-of-text / fill-in-the-middle markers and warns
            // at every load unless they are control tokens.
            types[id] = if CONTROL_LOOKING.contains(&text) {
                TOKEN_CONTROL
            } else {
                ty
            };
            Ok(())
        };
        for (text, id) in vocab {
            let id = id
                .as_u64()
                .with_context(|| format!("token `{text}` has a non-integer id"))?;
            place(id, text, TOKEN_NORMAL)?;
        }
        if let Some(added) = json.get("added_tokens").and_then(|a| a.as_array()) {
            for t in added {
                let id = t
                    .get("id")
                    .and_then(|v| v.as_u64())
                    .context("added token without id")?;
                let text = t
                    .get("content")
                    .and_then(|v| v.as_str())
                    .context("added token without content")?;
                let special = t.get("special").and_then(|v| v.as_bool()).unwrap_or(false);
                place(
                    id,
                    text,
                    if special {
                        TOKEN_CONTROL
                    } else {
                        TOKEN_USER_DEFINED
                    },
                )?;
            }
        }
        let tokens = tokens
            .into_iter()
            .enumerate()
            .map(|(i, t)| t.unwrap_or_else(|| format!("[PAD{i}]")))
            .collect();
        let merges = match model.get("merges").and_then(|m| m.as_array()) {
            Some(list) => list
                .iter()
                .map(|m| match m {
                    serde_json::Value::String(s) => Ok(s.clone()),
                    serde_json::Value::Array(pair) if pair.len() == 2 => Ok(format!(
                        "{} {}",
                        pair[0].as_str().unwrap_or(""),
                        pair[1].as_str().unwrap_or("")
                    )),
                    _ => bail!("malformed merge {m}"),
                })
                .collect::<Result<Vec<_>>>()?,
            None => bail!("no `model.merges`"),
        };
        Ok((tokens, types, merges))
    }

    /// Writes llama.cpp's tokenizer keys.
    pub fn write_llama_keys(&self, b: &mut GgufBuilder, bos: Option<u32>, eos: Option<u32>) {
        b.set("tokenizer.ggml.model", Value::Str("gpt2".into()));
        b.set("tokenizer.ggml.pre", Value::Str("qwen2".into()));
        b.set(
            "tokenizer.ggml.tokens",
            Value::Array(Array::Str(self.tokens.clone())),
        );
        b.set(
            "tokenizer.ggml.token_type",
            Value::Array(Array::I32(self.types.clone())),
        );
        b.set(
            "tokenizer.ggml.merges",
            Value::Array(Array::Str(self.merges.clone())),
        );
        if let Some(id) = bos {
            b.set("tokenizer.ggml.bos_token_id", Value::U32(id));
            b.set("tokenizer.ggml.padding_token_id", Value::U32(id));
        }
        if let Some(id) = eos {
            b.set("tokenizer.ggml.eos_token_id", Value::U32(id));
        }
        b.set("tokenizer.ggml.add_bos_token", Value::Bool(false));
    }
}
