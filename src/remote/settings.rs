//! `POST /api/settings`: the official server's sampling keys (attributes of its `LMGen`),
//! applied from the next conversation on. Every position of the official Gradio client's
//! sliders is taken. Unknown keys are ignored (and named in a warning), as the official
//! server ignores them. Unlike the official server, which sets whatever it is sent (and a
//! value its sampler cannot use breaks the next conversation), a wrong type or a value out
//! of range is refused, the whole body, with the key named.
//!
//! Two values mean what they mean in the official sampler:
//! - a repetition-penalty window of -1 (or 0) keeps no earlier tokens: no penalty;
//! - a repetition penalty below 1 (the sliders go down to 0) is no penalty (1): the official
//!   sampler asserts a penalty ≥ 1 once it has earlier tokens, which ends its conversation.

use anyhow::{Result, bail};
use serde_json::{Map, Value};

use crate::engine::Sampling;

/// What clients have set so far; each key keeps the model's (or the configuration's) value
/// until set.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Settings {
    pub use_sampling: Option<bool>,
    pub temp_text: Option<f32>,
    pub temp_audio: Option<f32>,
    pub top_k_text: Option<u32>,
    pub top_k_audio: Option<u32>,
    pub top_p_text: Option<f32>,
    pub top_p_audio: Option<f32>,
    pub repetition_penalty_text: Option<f32>,
    pub repetition_penalty_audio: Option<f32>,
    pub repetition_penalty_window_text: Option<usize>,
    pub repetition_penalty_window_audio: Option<usize>,
}

/// The longest repetition window (the engine's bound).
const MAX_WINDOW: u64 = 4096;
/// The longest key name a warning shows.
const SHOWN_KEY: usize = 64;
/// The largest top-k taken (larger is the whole vocabulary anyway).
const MAX_TOP_K: u64 = 1 << 20;
/// The largest temperature and penalty taken: far past any useful value.
const MAX_TEMPERATURE: f64 = 100.0;
const MAX_PENALTY: f64 = 100.0;

fn number(key: &str, v: &Value, range: std::ops::RangeInclusive<f64>) -> Result<f32> {
    match v.as_f64() {
        Some(x) if range.contains(&x) => Ok(x as f32),
        Some(x) => bail!("`{key}`: {x} is outside {}..{}", range.start(), range.end()),
        None => bail!("`{key}`: not a number"),
    }
}

fn integer(key: &str, v: &Value, max: u64) -> Result<u64> {
    // JSON numbers from Python or JavaScript may carry an integer as 1.0.
    let x = v.as_u64().or_else(|| {
        v.as_f64()
            .filter(|f| f.fract() == 0.0 && *f >= 0.0)
            .map(|f| f as u64)
    });
    match x {
        Some(x) if x <= max => Ok(x),
        Some(x) => bail!("`{key}`: {x} is over {max}"),
        None => bail!("`{key}`: not a whole number ≥ 0"),
    }
}

/// A window: -1 (the official "none") is 0, the engine's none.
fn window(key: &str, v: &Value) -> Result<usize> {
    if v.as_f64() == Some(-1.0) {
        return Ok(0);
    }
    match integer(key, v, MAX_WINDOW) {
        Ok(w) => Ok(w as usize),
        Err(_) => bail!("`{key}`: -1 (no window) or a whole number 0..{MAX_WINDOW}"),
    }
}

/// A penalty: below 1 is none (1).
fn penalty(key: &str, v: &Value) -> Result<f32> {
    Ok(number(key, v, 0.0..=MAX_PENALTY)?.max(1.0))
}

/// A key name as a warning shows it: at most `SHOWN_KEY` characters.
fn shown(key: &str) -> String {
    let mut s: String = key.chars().take(SHOWN_KEY).collect();
    if s.len() < key.len() {
        s.push('…');
    }
    s
}

impl Settings {
    /// `self` with the keys of the JSON object `body` set (unknown keys ignored); the error
    /// names the first bad key.
    pub fn with(&self, body: &[u8]) -> Result<Settings> {
        Ok(self.with_unknown(body)?.0)
    }

    /// As `with`, and the unknown keys, each cut to 64 characters (for a warning).
    pub fn with_unknown(&self, body: &[u8]) -> Result<(Settings, Vec<String>)> {
        let Ok(Value::Object(map)) = serde_json::from_slice::<Value>(body) else {
            bail!("Invalid JSON");
        };
        self.with_keys(&map)
    }

    fn with_keys(&self, map: &Map<String, Value>) -> Result<(Settings, Vec<String>)> {
        let mut s = *self;
        let mut unknown = vec![];
        for (key, v) in map {
            let k = key.as_str();
            match k {
                "use_sampling" => match v.as_bool() {
                    Some(b) => s.use_sampling = Some(b),
                    None => bail!("`use_sampling`: not true or false"),
                },
                "temp_text" => s.temp_text = Some(number(k, v, 0.0..=MAX_TEMPERATURE)?),
                "temp_audio" => s.temp_audio = Some(number(k, v, 0.0..=MAX_TEMPERATURE)?),
                "top_p_text" => s.top_p_text = Some(number(k, v, 0.0..=1.0)?),
                "top_p_audio" => s.top_p_audio = Some(number(k, v, 0.0..=1.0)?),
                "top_k_text" => s.top_k_text = Some(integer(k, v, MAX_TOP_K)? as u32),
                "top_k_audio" => s.top_k_audio = Some(integer(k, v, MAX_TOP_K)? as u32),
                "repetition_penalty_text" => s.repetition_penalty_text = Some(penalty(k, v)?),
                "repetition_penalty_audio" => s.repetition_penalty_audio = Some(penalty(k, v)?),
                "repetition_penalty_window_text" => {
                    s.repetition_penalty_window_text = Some(window(k, v)?)
                }
                "repetition_penalty_window_audio" => {
                    s.repetition_penalty_window_audio = Some(window(k, v)?)
                }
                other => unknown.push(shown(other)),
            }
        }
        Ok((s, unknown))
    }

    /// Every key's value in force: these settings over `base`, under the official names.
    pub fn effective(&self, base: Sampling) -> Value {
        let s = Settings {
            use_sampling: None,
            ..*self
        }
        .apply(base);
        // As written in a form: 0.9, not 0.8999999761581421.
        let shortest = |x: f32| x.to_string().parse::<f64>().unwrap_or(f64::NAN);
        serde_json::json!({
            "use_sampling": self.use_sampling.unwrap_or(true),
            "temp_text": shortest(s.text.temperature),
            "temp_audio": shortest(s.audio.temperature),
            "top_k_text": s.text.top_k,
            "top_k_audio": s.audio.top_k,
            "top_p_text": shortest(s.text.top_p),
            "top_p_audio": shortest(s.audio.top_p),
            "repetition_penalty_text": shortest(s.text.repetition_penalty),
            "repetition_penalty_audio": shortest(s.audio.repetition_penalty),
            "repetition_penalty_window_text": s.text.repetition_window,
            "repetition_penalty_window_audio": s.audio.repetition_window,
        })
    }

    /// `base` with these settings applied. `use_sampling: false` is argmax for both streams
    /// (the penalties still apply), as in the official `LMGen`.
    pub fn apply(&self, base: Sampling) -> Sampling {
        let mut s = base;
        let set = |dst: &mut f32, v: Option<f32>| *dst = v.unwrap_or(*dst);
        set(&mut s.text.temperature, self.temp_text);
        set(&mut s.audio.temperature, self.temp_audio);
        set(&mut s.text.top_p, self.top_p_text);
        set(&mut s.audio.top_p, self.top_p_audio);
        set(&mut s.text.repetition_penalty, self.repetition_penalty_text);
        set(
            &mut s.audio.repetition_penalty,
            self.repetition_penalty_audio,
        );
        s.text.top_k = self.top_k_text.unwrap_or(s.text.top_k);
        s.audio.top_k = self.top_k_audio.unwrap_or(s.audio.top_k);
        s.text.repetition_window = self
            .repetition_penalty_window_text
            .unwrap_or(s.text.repetition_window);
        s.audio.repetition_window = self
            .repetition_penalty_window_audio
            .unwrap_or(s.audio.repetition_window);
        if self.use_sampling == Some(false) {
            s = s.greedy();
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flm_kernels::sampling::SamplingParams;

    fn base() -> Sampling {
        let p = |t| SamplingParams {
            temperature: t,
            top_p: 0.9,
            top_k: 1,
            repetition_penalty: 1.2,
            repetition_window: 50,
        };
        Sampling {
            text: p(0.01),
            audio: p(0.5),
            audio_penalty_codebooks: 4,
        }
    }

    #[test]
    fn the_official_keys_apply_and_accumulate() {
        // What the official Gradio client posts on page load.
        let gradio = br#"{"temp_text": 0.01, "top_p_text": 1.0, "top_k_text": 0,
            "repetition_penalty_text": 1.1, "repetition_penalty_window_text": 50,
            "temp_audio": 0.1, "top_p_audio": 0.9, "top_k_audio": 0,
            "repetition_penalty_audio": 1.2, "repetition_penalty_window_audio": 50}"#;
        let s = Settings::default().with(gradio).unwrap();
        let a = s.apply(base());
        assert_eq!(a.text.top_p, 1.0);
        assert_eq!(a.text.repetition_penalty, 1.1);
        assert_eq!(a.audio.temperature, 0.1);
        assert_eq!(a.audio.top_k, 0);
        a.check().unwrap();
        // A later post changes only its keys; use_sampling false is argmax.
        let s = s
            .with(br#"{"use_sampling": false, "top_k_audio": 5.0}"#)
            .unwrap();
        let a = s.apply(base());
        assert_eq!((a.text.temperature, a.audio.temperature), (0.0, 0.0));
        assert_eq!((a.audio.top_k, a.text.repetition_penalty), (5, 1.1));
        assert_eq!(Settings::default().apply(base()).text, base().text);
    }

    #[test]
    fn bad_bodies_are_refused_naming_the_key() {
        let s = Settings::default();
        for (body, says) in [
            (&b"{not json"[..], "Invalid JSON"),
            (b"[1, 2]", "Invalid JSON"),
            (b"{\"temp_text\": -1}", "`temp_text`: -1 is outside"),
            (b"{\"temp_text\": \"hot\"}", "`temp_text`: not a number"),
            (b"{\"top_p_audio\": 1.5}", "`top_p_audio`"),
            (b"{\"top_k_text\": 2.5}", "`top_k_text`: not a whole number"),
            (
                b"{\"repetition_penalty_text\": -0.5}",
                "`repetition_penalty_text`",
            ),
            (b"{\"repetition_penalty_window_audio\": 100000}", "0..4096"),
            (
                b"{\"repetition_penalty_window_text\": -2}",
                "`repetition_penalty_window_text`: -1 (no window)",
            ),
            (
                b"{\"repetition_penalty_window_text\": 2.5}",
                "`repetition_penalty_window_text`",
            ),
            (b"{\"use_sampling\": 1}", "`use_sampling`"),
        ] {
            let e = s.with(body).unwrap_err().to_string();
            assert!(e.contains(says), "{}: {e}", String::from_utf8_lossy(body));
        }
        // A refused body changes nothing, even where its other keys were good.
        assert!(s.with(br#"{"temp_text": 0.5, "top_p_text": 2}"#).is_err());
    }

    #[test]
    fn unknown_keys_are_ignored_and_named_cut_short() {
        let long = "k".repeat(100);
        let body = format!(r#"{{"temp_txt": 1, "temp_text": 0.5, "{long}": [1]}}"#);
        let (s, unknown) = Settings::default().with_unknown(body.as_bytes()).unwrap();
        assert_eq!(s.temp_text, Some(0.5));
        assert_eq!(unknown.len(), 2, "{unknown:?}");
        assert!(unknown.contains(&"temp_txt".to_string()));
        assert!(
            unknown.contains(&format!("{}…", "k".repeat(64))),
            "{unknown:?}"
        );
        assert_eq!(s.apply(base()).text.temperature, 0.5);
    }

    /// Every end of every slider of the official Gradio client (`client_gradio.py`), posted
    /// whole as it posts them (ints where its slider steps by 1, else floats), is taken, and
    /// gives sampling the engine runs.
    #[test]
    fn every_end_of_the_official_sliders_is_taken() {
        // key, minimum, maximum
        let sliders: [(&str, f64, f64); 10] = [
            ("temp_audio", 0.0, 2.0),
            ("top_k_audio", 0.0, 1000.0),
            ("top_p_audio", 0.0, 1.0),
            ("repetition_penalty_audio", 0.0, 2.0),
            ("repetition_penalty_window_audio", -1.0, 100.0),
            ("temp_text", 0.0, 2.0),
            ("top_k_text", 0.0, 100.0),
            ("top_p_text", 0.0, 1.0),
            ("repetition_penalty_text", 0.0, 2.0),
            ("repetition_penalty_window_text", -1.0, 100.0),
        ];
        let defaults = [0.1, 0.0, 0.9, 1.2, 50.0, 0.01, 0.0, 1.0, 1.1, 50.0];
        for (i, (key, lo, hi)) in sliders.iter().enumerate() {
            for end in [*lo, *hi] {
                for use_sampling in [true, false] {
                    let mut body = serde_json::Map::new();
                    body.insert("use_sampling".into(), use_sampling.into());
                    for (j, (k, _, _)) in sliders.iter().enumerate() {
                        let x = if i == j { end } else { defaults[j] };
                        let v: Value = if k.contains("top_k") || k.contains("window") {
                            (x as i64).into()
                        } else {
                            x.into()
                        };
                        body.insert(k.to_string(), v);
                    }
                    let text = Value::Object(body).to_string();
                    let s = Settings::default()
                        .with(text.as_bytes())
                        .unwrap_or_else(|e| panic!("{key} = {end}: {e}"));
                    s.apply(base())
                        .check()
                        .unwrap_or_else(|e| panic!("{key} = {end}: {e}"));
                }
            }
        }
        // -1: no window; a penalty below 1: none.
        let s = Settings::default()
            .with(
                br#"{"repetition_penalty_window_text": -1, "repetition_penalty_window_audio": -1.0,
                "repetition_penalty_text": 0, "repetition_penalty_audio": 0.5}"#,
            )
            .unwrap();
        let a = s.apply(base());
        assert_eq!(
            (a.text.repetition_window, a.audio.repetition_window),
            (0, 0)
        );
        assert_eq!(
            (a.text.repetition_penalty, a.audio.repetition_penalty),
            (1.0, 1.0)
        );
        assert!(!a.text.penalises() && !a.audio.penalises());
    }

    #[test]
    fn the_effective_settings_name_every_key_and_post_back_unchanged() {
        let s = Settings::default()
            .with(br#"{"use_sampling": false, "top_p_text": 0.95, "top_k_audio": 3}"#)
            .unwrap();
        let v = s.effective(base());
        let keys: Vec<&str> = v.as_object().unwrap().keys().map(|k| k.as_str()).collect();
        assert_eq!(keys.len(), 11, "{keys:?}");
        assert_eq!(v["use_sampling"], false);
        // The temperatures stay the model's (argmax is `use_sampling`), written shortest.
        assert_eq!(
            (v["temp_text"].as_f64(), v["temp_audio"].as_f64()),
            (Some(0.01), Some(0.5))
        );
        assert_eq!(
            (v["top_p_text"].as_f64(), v["top_k_audio"].as_u64()),
            (Some(0.95), Some(3))
        );
        assert_eq!(v["repetition_penalty_window_text"], 50);
        // What a page shows and posts back as it is sets nothing new.
        let again = Settings::default().with(v.to_string().as_bytes()).unwrap();
        let (a, b) = (again.apply(base()), s.apply(base()));
        assert_eq!((a.text, a.audio), (b.text, b.audio));
        assert_eq!(again.effective(base()), v);
    }
}
