//! Incremental detokenization of the text stream.
//!
//! The vocabulary is Qwen2's byte-level BPE: each token stands for a run of bytes, and a
//! character (a CJK one often) can be split across tokens. The bytes of every token are
//! worked out once at load, from the model's `tokenizer.json` through the `tokenizers` crate;
//! a step appends its token's bytes and hands out the longest whole-UTF-8 prefix, holding
//! the rest back. Special tokens (the wait token among them) decode to nothing, as with
//! `skip_special_tokens`; so do ids past the tokenizer's vocabulary.

use anyhow::{Context, Result};
use tokenizers::Tokenizer;

pub struct Detokenizer {
    /// Bytes of each id; empty for special tokens.
    bytes: Vec<Box<[u8]>>,
    pending: Vec<u8>,
    piece: String,
}

/// GPT-2's printable stand-ins for the 256 byte values, inverted: char → byte.
fn byte_of_char() -> std::collections::HashMap<char, u8> {
    let mut printable: Vec<u32> = (0x21..=0x7e)
        .chain(0xa1..=0xac)
        .chain(0xae..=0xff)
        .collect();
    let mut chars: Vec<u32> = printable.clone();
    let mut n = 0;
    for b in 0..256u32 {
        if !printable.contains(&b) {
            printable.push(b);
            chars.push(256 + n);
            n += 1;
        }
    }
    printable
        .iter()
        .zip(&chars)
        .map(|(&b, &c)| (char::from_u32(c).unwrap(), b as u8))
        .collect()
}

impl Detokenizer {
    /// From the text of a `tokenizer.json`.
    pub fn from_json(json: &str) -> Result<Detokenizer> {
        let tok: Tokenizer = json
            .parse()
            .map_err(|e| anyhow::anyhow!("tokenizer.json: {e}"))?;
        let map = byte_of_char();
        let added = tok.get_added_tokens_decoder();
        let n = tok.get_vocab_size(true);
        let mut bytes: Vec<Box<[u8]>> = Vec::with_capacity(n);
        for id in 0..n as u32 {
            let b: Box<[u8]> = match added.get(&id) {
                Some(t) if t.special => Box::new([]),
                Some(t) => t.content.as_bytes().into(),
                None => match tok.id_to_token(id) {
                    Some(s) => s
                        .chars()
                        .map(|c| map.get(&c).copied())
                        .collect::<Option<Vec<u8>>>()
                        .with_context(|| format!("tokenizer.json: token {id} is not byte-level"))?
                        .into(),
                    None => Box::new([]),
                },
            };
            bytes.push(b);
        }
        Ok(Detokenizer {
            bytes,
            pending: Vec::with_capacity(1024),
            piece: String::with_capacity(1024),
        })
    }

    /// Ids the tokenizer knows.
    pub fn vocab_size(&self) -> usize {
        self.bytes.len()
    }

    /// Adds one token and returns the text that became whole ("" while a character is
    /// incomplete, for special tokens and for unknown ids). Invalid byte runs become U+FFFD.
    pub fn push(&mut self, id: i32) -> &str {
        self.piece.clear();
        if let Some(b) = usize::try_from(id).ok().and_then(|i| self.bytes.get(i)) {
            self.pending.extend_from_slice(b);
        }
        let mut done = 0;
        loop {
            match std::str::from_utf8(&self.pending[done..]) {
                Ok(s) => {
                    self.piece.push_str(s);
                    done = self.pending.len();
                    break;
                }
                Err(e) => {
                    let ok = e.valid_up_to();
                    // The prefix was just validated.
                    self.piece.push_str(
                        std::str::from_utf8(&self.pending[done..done + ok]).unwrap_or_default(),
                    );
                    done += ok;
                    match e.error_len() {
                        Some(bad) => {
                            self.piece.push(char::REPLACEMENT_CHARACTER);
                            done += bad;
                        }
                        // An incomplete character at the end: hold it back.
                        None => break,
                    }
                }
            }
        }
        self.pending.drain(..done);
        &self.piece
    }

    /// Forgets held-back bytes (a new conversation).
    pub fn reset(&mut self) {
        self.pending.clear();
    }
}
