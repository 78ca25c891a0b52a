//! The appliance's configuration: one TOML file, on top of an optional board profile, under
//! the command-line flags. Every key is documented in `boards/flm-edge.toml`.
//!
//! Unknown keys and wrong types are refused with one line naming the key.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail, ensure};
use serde::Deserialize;

/// Board profiles shipped with the binary (`boards/*.toml`).
pub const BOARDS: [(&str, &str); 4] = [
    (
        "jetson-agx-orin",
        include_str!("../boards/jetson-agx-orin.toml"),
    ),
    (
        "jetson-orin-nx",
        include_str!("../boards/jetson-orin-nx.toml"),
    ),
    (
        "jetson-orin-nano",
        include_str!("../boards/jetson-orin-nano.toml"),
    ),
    ("x86-dev", include_str!("../boards/x86-dev.toml")),
];

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Model folder made by `flm-edge convert`.
    pub model: Option<PathBuf>,
    /// Compute threads; 0 uses every core.
    pub threads: usize,
    /// Nice value (-20..19) of the thread that runs the model and of the compute threads it
    /// starts; below 0 the model keeps its cores when other programs compute. 0 leaves it.
    pub compute_nice: i32,
    /// "cpu"; "cuda" or "vulkan" (the best device of that backend, on builds with its
    /// feature), "gpu" (any), or one device such as "cuda0".
    pub backend: String,
    /// MiB the model may take on this board (weights, and per conversation its KV cache and
    /// Mimi); 0: the machine's memory less 1 GiB for the system.
    pub memory_mib: u64,
    pub audio: Audio,
    pub schedule: Schedule,
    pub context: ContextPolicy,
    pub sampling: Sampling,
    pub status: Status,
    pub server: Server,
    pub conversation: Conversation,
    /// Whether any layer has an `[audio]` table (then ALSA is the default audio source).
    #[serde(skip)]
    pub audio_configured: bool,
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Audio {
    /// Where the user's voice comes from: "alsa" (the devices below; a network conversation
    /// takes the model while it lasts), "network" (only conversations over `[server]`), or
    /// "" (ALSA when an `[audio]` table is configured, else the network).
    pub source: String,
    /// ALSA capture PCM: `hw:CARD=Name,DEV=0`, `plughw:CARD=Name`, or a named PCM.
    pub capture: String,
    /// ALSA playback PCM.
    pub playback: String,
    /// Device sample rate in Hz.
    pub rate: u32,
    /// Device channels: 1 or 2 (stereo capture is mixed down, playback duplicated).
    pub channels: u32,
    /// Sample format: "s16", "s32" or "f32".
    pub format: String,
    /// ALSA period in milliseconds.
    pub period_ms: u32,
    /// Periods in the ALSA buffer.
    pub periods: u32,
    /// Real-time priority (SCHED_FIFO 1..99) of the two audio threads; 0 leaves them normal.
    pub rt_priority: u32,
    /// Echo cancellation of what the loudspeaker plays in what the microphone hears: "aec3"
    /// (WebRTC's AEC3, at `rate` 16, 32 or 48 kHz), "hardware" (a microphone array that
    /// cancels its own echo) or "off" (headphones).
    pub echo_cancel: String,
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Schedule {
    /// 80 ms frames between a frame's capture and the playback of the model's answer to it:
    /// the time a step has before its output is due.
    pub latency_frames: u32,
    /// Captured frames allowed to wait for the model; older ones are dropped (and counted).
    pub max_backlog_frames: u32,
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ContextPolicy {
    /// Backbone positions (steps) kept; 0 uses the model's context length.
    pub positions: u32,
    /// First steps never dropped when the context is full.
    pub sink: u32,
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Sampling {
    pub seed: u64,
    pub greedy: bool,
    pub text_temperature: Option<f32>,
    pub text_top_p: Option<f32>,
    pub text_top_k: Option<u32>,
    pub text_repetition_penalty: Option<f32>,
    pub audio_temperature: Option<f32>,
    pub audio_top_p: Option<f32>,
    pub audio_top_k: Option<u32>,
    pub audio_repetition_penalty: Option<f32>,
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Status {
    /// Loopback address of the Prometheus text endpoint (`/metrics`); "" turns it off.
    pub metrics: String,
    /// Unix socket of the JSON-lines event stream (text, listening/speaking); "" turns it off.
    pub events: String,
    /// What the model hears (every frame Mimi's encoder is given, after echo cancellation,
    /// mute and resampling) into this 24 kHz mono float WAV; "" records nothing.
    pub record_heard: String,
    /// Seconds between two summary lines in the log.
    pub log_interval_s: u32,
    /// Whether the event lines of a network conversation's begin and end (the event socket's
    /// and the page's `/api/events`) carry the client's address; the log always does.
    pub show_peers: bool,
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Server {
    /// Address of the remote-client server (FLM-Audio's websocket protocol, settings, status
    /// routes); "" turns it off. A non-loopback address exposes the model to the network.
    pub listen: String,
    /// PEM certificate chain and private key: https and wss (browsers on other machines give
    /// a page the microphone only over https). Both or neither.
    pub tls_cert: String,
    pub tls_key: String,
    /// HTTP connections served at once.
    pub max_connections: u32,
    /// A conversation whose client sends nothing for this long is closed.
    pub idle_timeout_s: u32,
    /// Seconds of a client's audio held ahead of the model: a burst up to this is taken at
    /// once; past it the server reads no more until the model has heard some (TCP holds
    /// the rest at the client). Nothing the client sends is dropped.
    pub receive_buffer_s: u32,
    /// A folder whose files replace the built-in page's (same names: index.html,
    /// style.css, app.js, ogg.js; one missing is served built-in), read at each request: a
    /// kiosk's own branding. "" serves the built-in page.
    pub page_dir: String,
    /// A shared secret that programs and the page give (`Authorization: Bearer …` or
    /// `?token=…`) on the remote-client routes; "" asks for none.
    pub token: String,
    /// Origins, besides the server's own, whose pages may use the remote-client routes
    /// (exact, such as "https://kiosk.example"; "*" any).
    pub allowed_origins: Vec<String>,
    /// A network conversation is closed after this many seconds; 0 never.
    pub max_conversation_s: u32,
    /// Conversations stepped together (1..=16); 1: one owner at a time, a second client is
    /// refused as busy.
    pub max_conversations: u32,
    /// With `max_conversations` > 1 and ALSA devices: whether the local microphone's
    /// conversation is one of them (it keeps its place; network clients have the other
    /// `max_conversations` - 1). False: the devices stay closed; network conversations only.
    pub local_conversation: bool,
}

impl Default for Server {
    fn default() -> Self {
        Server {
            listen: String::new(),
            tls_cert: String::new(),
            tls_key: String::new(),
            max_connections: 32,
            idle_timeout_s: 30,
            receive_buffer_s: 2,
            page_dir: String::new(),
            token: String::new(),
            allowed_origins: vec![],
            max_conversation_s: 600,
            max_conversations: 1,
            local_conversation: true,
        }
    }
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Conversation {
    /// Seconds in which neither side spoke after which a new conversation starts (the next
    /// visitor does not inherit the last one's); 0 never.
    pub idle_reset_s: u32,
    /// The user's level (RMS, dB full scale) below which the user counts as quiet.
    pub quiet_dbfs: f32,
}

impl Default for Conversation {
    fn default() -> Self {
        Conversation {
            idle_reset_s: 60,
            quiet_dbfs: -45.0,
        }
    }
}

/// Where the user's voice comes from, once the configuration is read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// ALSA devices; a network conversation takes the model while it lasts.
    Alsa,
    /// Network conversations only: no sound device is opened.
    Network,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            model: None,
            threads: 0,
            compute_nice: 0,
            backend: "cpu".into(),
            memory_mib: 0,
            audio: Audio::default(),
            schedule: Schedule::default(),
            context: ContextPolicy::default(),
            sampling: Sampling::default(),
            status: Status::default(),
            server: Server::default(),
            conversation: Conversation::default(),
            audio_configured: false,
        }
    }
}

impl Default for Audio {
    fn default() -> Self {
        Audio {
            source: String::new(),
            capture: "default".into(),
            playback: "default".into(),
            rate: 48_000,
            channels: 1,
            format: "s16".into(),
            period_ms: 20,
            periods: 4,
            rt_priority: 0,
            echo_cancel: "off".into(),
        }
    }
}

impl Default for Schedule {
    fn default() -> Self {
        Schedule {
            latency_frames: 2,
            max_backlog_frames: 4,
        }
    }
}

impl Default for ContextPolicy {
    fn default() -> Self {
        ContextPolicy {
            positions: 0,
            sink: 16,
        }
    }
}

impl Default for Sampling {
    fn default() -> Self {
        Sampling {
            // The official code seeds everything with 42.
            seed: 42,
            greedy: false,
            text_temperature: None,
            text_top_p: None,
            text_top_k: None,
            text_repetition_penalty: None,
            audio_temperature: None,
            audio_top_p: None,
            audio_top_k: None,
            audio_repetition_penalty: None,
        }
    }
}

impl Default for Status {
    fn default() -> Self {
        Status {
            metrics: "127.0.0.1:9464".into(),
            events: String::new(),
            record_heard: String::new(),
            log_interval_s: 60,
            show_peers: false,
        }
    }
}

/// The bounds of `server.token`'s length.
pub const MIN_TOKEN: usize = 16;
pub const MAX_TOKEN: usize = 256;

/// The bytes a token may have: URL-safe as they are (RFC 3986's unreserved characters).
fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// An entry of `server.allowed_origins`: "*", or an origin as browsers send it,
/// `http(s)://host[:port]` with no path.
fn check_origin(o: &str) -> std::result::Result<(), &'static str> {
    if o == "*" {
        return Ok(());
    }
    let Some(rest) = o
        .strip_prefix("http://")
        .or_else(|| o.strip_prefix("https://"))
    else {
        return Err("not \"*\" nor an origin such as https://kiosk.example (http or https)");
    };
    if rest.is_empty() {
        return Err("no host");
    }
    if rest.contains(['/', '?', '#', '@', ' ']) {
        return Err("an origin is scheme://host[:port], with no path, query or user");
    }
    if rest.bytes().any(|b| b.is_ascii_uppercase()) {
        return Err("browsers send origins in lower case");
    }
    Ok(())
}

/// Parses TOML text into `base`'s type, naming the offending key on error. Keys absent from
/// the text keep their defaults.
fn parse(text: &str, label: &str) -> Result<Config> {
    let de = toml::Deserializer::parse(text).map_err(|e| {
        let msg = e.message().to_string();
        anyhow::anyhow!("{label}: {}", msg.lines().next().unwrap_or("not TOML"))
    })?;
    let cfg: Config = serde_path_to_error::deserialize(de).map_err(|e| {
        let key = e.path().to_string();
        let msg = e.inner().message().to_string();
        anyhow::anyhow!(
            "{label}: key `{key}`: {}",
            msg.lines().next().unwrap_or("invalid")
        )
    })?;
    Ok(cfg)
}

/// Merges `over` onto `base`: a table's keys present in `over` win. Works on TOML values so
/// that "absent" and "default" differ.
fn merge(base: &mut toml::Table, over: toml::Table) {
    for (k, v) in over {
        match (base.get_mut(&k), v) {
            (Some(toml::Value::Table(b)), toml::Value::Table(o)) => merge(b, o),
            (_, v) => {
                base.insert(k, v);
            }
        }
    }
}

fn table(text: &str, label: &str) -> Result<toml::Table> {
    // Type-check the layer on its own first, for a message that names the key.
    parse(text, label)?;
    text.parse::<toml::Table>()
        .map_err(|e| anyhow::anyhow!("{label}: {}", e.message()))
}

impl Config {
    /// The effective configuration: defaults, then the board profile, then the file.
    pub fn load(board: Option<&str>, file: Option<&Path>) -> Result<Config> {
        let mut merged = toml::Table::new();
        if let Some(name) = board {
            let Some((_, text)) = BOARDS.iter().find(|(n, _)| *n == name) else {
                let names: Vec<&str> = BOARDS.iter().map(|(n, _)| *n).collect();
                bail!("board `{name}` is unknown (boards: {})", names.join(", "));
            };
            merge(&mut merged, table(text, &format!("board {name}"))?);
        }
        if let Some(path) = file {
            let label = path.display().to_string();
            let text =
                std::fs::read_to_string(path).with_context(|| format!("{label}: cannot read"))?;
            merge(&mut merged, table(&text, &label)?);
        }
        let label = file.map_or("configuration".to_string(), |p| p.display().to_string());
        let mut cfg = parse(&toml::to_string(&merged)?, &label)?;
        cfg.audio_configured = merged.contains_key("audio");
        cfg.check().with_context(|| label.clone())?;
        Ok(cfg)
    }

    /// Checks values that types alone do not constrain; errors name the key.
    pub fn check(&self) -> Result<()> {
        let a = &self.audio;
        self.backend
            .parse::<flm_kernels::device::Device>()
            .map_err(|e| anyhow::anyhow!("key `backend`: {e}"))?;
        ensure!(
            (8_000..=192_000).contains(&a.rate),
            "key `audio.rate`: {} Hz is outside 8000..192000",
            a.rate
        );
        ensure!(
            matches!(a.channels, 1 | 2),
            "key `audio.channels`: {} (1 or 2)",
            a.channels
        );
        ensure!(
            matches!(a.format.as_str(), "s16" | "s32" | "f32"),
            "key `audio.format`: `{}` is not s16, s32 or f32",
            a.format
        );
        ensure!(
            matches!(a.echo_cancel.as_str(), "aec3" | "hardware" | "off"),
            "key `audio.echo_cancel`: `{}` is not aec3, hardware or off",
            a.echo_cancel
        );
        ensure!(
            a.echo_cancel != "aec3" || crate::echo::RATES.contains(&a.rate),
            "key `audio.echo_cancel`: aec3 runs at 16000, 32000 or 48000 Hz, and `audio.rate` is {}",
            a.rate
        );
        ensure!(
            (1..=80).contains(&a.period_ms),
            "key `audio.period_ms`: {} is outside 1..80",
            a.period_ms
        );
        ensure!(
            (2..=16).contains(&a.periods),
            "key `audio.periods`: {} is outside 2..16",
            a.periods
        );
        ensure!(
            a.rt_priority <= 99,
            "key `audio.rt_priority`: {} is over 99",
            a.rt_priority
        );
        ensure!(
            (-20..=19).contains(&self.compute_nice),
            "key `compute_nice`: {} is outside -20..19",
            self.compute_nice
        );
        ensure!(!a.capture.is_empty(), "key `audio.capture` is empty");
        ensure!(!a.playback.is_empty(), "key `audio.playback` is empty");
        let s = &self.schedule;
        use crate::serve::pipeline::{MAX_BACKLOG_FRAMES, MAX_LATENCY_FRAMES};
        ensure!(
            (1..=MAX_LATENCY_FRAMES).contains(&s.latency_frames),
            "key `schedule.latency_frames`: {} is outside 1..{MAX_LATENCY_FRAMES} (the frames the output queue holds)",
            s.latency_frames
        );
        ensure!(
            (1..=MAX_BACKLOG_FRAMES).contains(&s.max_backlog_frames),
            "key `schedule.max_backlog_frames`: {} is outside 1..{MAX_BACKLOG_FRAMES} (the frames the input queue holds)",
            s.max_backlog_frames
        );
        ensure!(
            matches!(a.source.as_str(), "" | "alsa" | "network"),
            "key `audio.source`: `{}` is not alsa or network",
            a.source
        );
        let v = &self.server;
        if !v.listen.is_empty() {
            v.listen.parse::<std::net::SocketAddr>().map_err(|_| {
                anyhow::anyhow!("key `server.listen`: `{}` is not an address:port", v.listen)
            })?;
        }
        ensure!(
            a.source != "network" || !v.listen.is_empty(),
            "key `audio.source`: network needs `server.listen` (an address to serve)"
        );
        ensure!(
            v.tls_cert.is_empty() == v.tls_key.is_empty(),
            "keys `server.tls_cert` and `server.tls_key`: give both or neither"
        );
        ensure!(
            (1..=1024).contains(&v.max_connections),
            "key `server.max_connections`: {} is outside 1..1024",
            v.max_connections
        );
        ensure!(
            v.page_dir.is_empty() || std::path::Path::new(&v.page_dir).is_dir(),
            "key `server.page_dir`: {}: not a folder",
            v.page_dir
        );
        ensure!(
            (1..=3600).contains(&v.idle_timeout_s),
            "key `server.idle_timeout_s`: {} is outside 1..3600",
            v.idle_timeout_s
        );
        ensure!(
            (2..=60).contains(&v.receive_buffer_s),
            "key `server.receive_buffer_s`: {} is outside 2..60 (seconds of audio held per conversation)",
            v.receive_buffer_s
        );
        ensure!(
            (1..=crate::engine::MAX_CONVERSATIONS as u32).contains(&v.max_conversations),
            "key `server.max_conversations`: {} is outside 1..{}",
            v.max_conversations,
            crate::engine::MAX_CONVERSATIONS
        );
        ensure!(
            v.max_conversations == 1 || !v.listen.is_empty(),
            "key `server.max_conversations`: {} conversations need `server.listen`",
            v.max_conversations
        );
        ensure!(
            v.max_conversation_s <= 86_400,
            "key `server.max_conversation_s`: {} is over a day (0 turns the limit off)",
            v.max_conversation_s
        );
        ensure!(
            v.token.is_empty()
                || (v.token.len() >= MIN_TOKEN
                    && v.token.len() <= MAX_TOKEN
                    && v.token.bytes().all(is_token_byte)),
            "key `server.token`: use {MIN_TOKEN} to {MAX_TOKEN} letters, digits, `-`, `.`, `_` or `~` (it travels in URLs; `openssl rand -hex 16` makes one)"
        );
        for o in &v.allowed_origins {
            check_origin(o)
                .map_err(|why| anyhow::anyhow!("key `server.allowed_origins`: `{o}`: {why}"))?;
        }
        let c = &self.conversation;
        ensure!(
            c.idle_reset_s <= 86_400,
            "key `conversation.idle_reset_s`: {} is over a day (0 turns it off)",
            c.idle_reset_s
        );
        ensure!(
            (-100.0..=0.0).contains(&c.quiet_dbfs),
            "key `conversation.quiet_dbfs`: {} is outside -100..0",
            c.quiet_dbfs
        );
        if !self.status.metrics.is_empty() {
            let addr: std::net::SocketAddr = self.status.metrics.parse().map_err(|_| {
                anyhow::anyhow!(
                    "key `status.metrics`: `{}` is not an address:port",
                    self.status.metrics
                )
            })?;
            ensure!(
                addr.ip().is_loopback(),
                "key `status.metrics`: {addr} is not a loopback address (the endpoint is local only)"
            );
        }
        Ok(())
    }

    /// The audio source this configuration asks for.
    pub fn source(&self) -> Source {
        match self.audio.source.as_str() {
            "network" => Source::Network,
            "alsa" => Source::Alsa,
            _ if !self.audio_configured && !self.server.listen.is_empty() => Source::Network,
            _ => Source::Alsa,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server(edit: impl FnOnce(&mut Server)) -> Result<()> {
        let mut c = Config::default();
        edit(&mut c.server);
        c.check()
    }

    #[test]
    fn max_conversations_is_checked_naming_the_key() {
        let listen = |n: u32| {
            server(|s| {
                s.listen = "127.0.0.1:8990".into();
                s.max_conversations = n;
            })
        };
        assert!(listen(1).is_ok() && listen(16).is_ok());
        for n in [0, 17] {
            let e = listen(n).unwrap_err().to_string();
            assert!(e.starts_with("key `server.max_conversations`"), "{n}: {e}");
        }
        // Several conversations come over the network.
        let e = server(|s| s.max_conversations = 2).unwrap_err().to_string();
        assert!(e.contains("need `server.listen`"), "{e}");
    }

    #[test]
    fn the_access_keys_are_checked_naming_the_key() {
        assert!(server(|_| {}).is_ok());
        assert!(server(|s| s.token = "0123456789abcdef".into()).is_ok());
        assert!(server(|s| s.token = "a-b.c_d~e-f.g_h~".into()).is_ok());
        for bad in ["0123456789abcde", "0123456789abcdef ", "0123456789abcdef%"] {
            let e = server(|s| s.token = bad.into()).unwrap_err().to_string();
            assert!(e.starts_with("key `server.token`"), "{bad}: {e}");
        }
        let e = server(|s| s.token = "x".repeat(MAX_TOKEN + 1)).unwrap_err();
        assert!(e.to_string().contains("server.token"));
        let origins =
            |o: &[&str]| server(|s| s.allowed_origins = o.iter().map(|o| o.to_string()).collect());
        assert!(
            origins(&[
                "*",
                "https://kiosk.example",
                "http://10.0.0.2:8990",
                "http://[::1]:80"
            ])
            .is_ok()
        );
        for bad in [
            "kiosk.example",
            "https://",
            "https://kiosk.example/",
            "https://kiosk.example/page",
            "ftp://kiosk.example",
            "https://Kiosk.example",
            "",
        ] {
            let e = origins(&[bad]).unwrap_err().to_string();
            assert!(
                e.starts_with("key `server.allowed_origins`") && !e.contains('\n'),
                "{bad}: {e}"
            );
        }
        assert!(server(|s| s.max_conversation_s = 0).is_ok());
        let e = server(|s| s.max_conversation_s = 86_401).unwrap_err();
        assert!(e.to_string().starts_with("key `server.max_conversation_s`"));
    }
}
