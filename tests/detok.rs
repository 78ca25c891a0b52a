//! The incremental detokenizer against the `tokenizers` crate, on the FLM tokenizer of the
//! test kit (Qwen2's byte-level BPE with the wait token at 151665).

use flm_edge::detok::Detokenizer;
use tokenizers::Tokenizer;

const WAIT: i32 = 151665;
const END_OF_TEXT: i32 = 151643;

fn json() -> String {
    flm_testkit::tokenizer::tokenizer_json().unwrap()
}

fn tokenizer() -> Tokenizer {
    json().parse().unwrap()
}

fn encode(tok: &Tokenizer, text: &str) -> Vec<i32> {
    let enc = tok.encode(text, false).unwrap();
    enc.get_ids().iter().map(|&i| i as i32).collect()
}

/// The pieces of `ids`, one per push.
fn pieces(detok: &mut Detokenizer, ids: &[i32]) -> Vec<String> {
    ids.iter().map(|&id| detok.push(id).to_string()).collect()
}

const ENGLISH: &str = "Full duplex dialog means the model listens and speaks at the same time.";
// Common CJK characters are whole tokens of Qwen2's vocabulary: nothing is split here.
const CHINESE: &str = "全双工对话意味着模型同时听和说。";
// 👋 is split after " " and its first 3 bytes: that push gives " " and holds 3 bytes back.
const MIXED: &str = "你好 world 👋🏽!";
// Rare characters are split into byte tokens, some of which end inside a character and
// give an empty piece.
const RARE_CJK: &str = "山上鬱鬱蔥蔥，龘靐齉，囧。";
const RARE_EMOJI: &str = "🫠🦩🪿 ok";

#[test]
fn sentences_round_trip_one_token_at_a_time() {
    let tok = tokenizer();
    let mut detok = Detokenizer::from_json(&json()).unwrap();
    assert_eq!(
        detok.vocab_size(),
        151666,
        "Qwen2 vocabulary and added tokens"
    );
    // (text, some token holds a partial character, some push gives "")
    for (text, partial, empty) in [
        (ENGLISH, false, false),
        (CHINESE, false, false),
        (MIXED, true, false),
        (RARE_CJK, true, true),
        (RARE_EMOJI, true, true),
    ] {
        let ids = encode(&tok, text);
        let pieces = pieces(&mut detok, &ids);
        assert_eq!(pieces.concat(), text);
        assert!(pieces.iter().all(|p| !p.contains('\u{FFFD}')), "{pieces:?}");
        // A token whose bytes alone are not valid UTF-8 decodes to U+FFFD on its own.
        let partial_tokens = ids
            .iter()
            .filter(|&&id| tok.decode(&[id as u32], true).unwrap().contains('\u{FFFD}'))
            .count();
        // Every id here is an ordinary token with bytes: an empty piece means it ended
        // inside a character and its bytes were held back.
        let empty_pieces = pieces.iter().filter(|p| p.is_empty()).count();
        eprintln!(
            "{text:?}: {} tokens, {partial_tokens} with a partial character, \
             {empty_pieces} empty pieces",
            ids.len()
        );
        let got = (partial_tokens > 0, empty_pieces > 0);
        assert_eq!(got, (partial, empty), "{text:?}: {ids:?} -> {pieces:?}");
    }
}

/// Ids of `RARE_EMOJI` and the index of the first token that ends inside a character.
fn split_point(tok: &Tokenizer) -> (Vec<i32>, usize) {
    let ids = encode(tok, RARE_EMOJI);
    let mut detok = Detokenizer::from_json(&json()).unwrap();
    let at = ids
        .iter()
        .position(|&id| detok.push(id).is_empty())
        .unwrap();
    (ids, at)
}

#[test]
fn special_and_unknown_ids_are_empty_and_keep_pending_bytes() {
    let tok = tokenizer();
    let (ids, at) = split_point(&tok);
    let mut detok = Detokenizer::from_json(&json()).unwrap();
    let mut text = String::new();
    for (i, &id) in ids.iter().enumerate() {
        text.push_str(detok.push(id));
        if i == at {
            // Bytes of a partial character are pending here.
            for other in [WAIT, END_OF_TEXT, 151644, 152000, -1, i32::MAX] {
                assert_eq!(detok.push(other), "", "id {other}");
            }
        }
    }
    assert_eq!(text, RARE_EMOJI);
    // And on their own.
    let mut detok = Detokenizer::from_json(&json()).unwrap();
    for other in [WAIT, END_OF_TEXT, 152000, -1] {
        assert_eq!(detok.push(other), "", "id {other}");
    }
}

#[test]
fn reset_drops_pending_bytes() {
    let tok = tokenizer();
    let (ids, at) = split_point(&tok);
    let mut detok = Detokenizer::from_json(&json()).unwrap();
    for &id in &ids[..=at] {
        detok.push(id);
    }
    detok.reset();
    let hello = encode(&tok, "hello");
    assert_eq!(pieces(&mut detok, &hello).concat(), "hello");
}

/// splitmix64: a seeded id stream without another dependency.
fn splitmix(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[test]
fn random_ids_decode_as_the_tokenizer_does() {
    let tok = tokenizer();
    let mut state = 5u64;
    let mut ids: Vec<i32> = (0..2000)
        .map(|_| (splitmix(&mut state) % END_OF_TEXT as u64) as i32)
        .collect();
    // `decode` turns bytes of an unfinished character at the very end into U+FFFD, where
    // `push` holds them back for the next token; an ASCII token last makes both flush them.
    ids.extend(encode(&tok, "."));
    let mut detok = Detokenizer::from_json(&json()).unwrap();
    let ours = pieces(&mut detok, &ids).concat();
    let ids_u32: Vec<u32> = ids.iter().map(|&i| i as u32).collect();
    let want = tok.decode(&ids_u32, true).unwrap();
    // Random byte-level tokens break characters: the replacement path is exercised.
    let replaced = want.matches('\u{FFFD}').count();
    eprintln!(
        "2000 random ids: {} chars, {replaced} U+FFFD",
        want.chars().count()
    );
    assert!(replaced > 0);
    assert_eq!(ours, want);
}
