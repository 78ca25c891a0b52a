//! What the daemon reports: counters and step timings, written with atomics by the audio and
//! step threads (no locks), read by the status endpoint and the log.

use std::fmt::{Display, Write as _};
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicI64, AtomicU64, Ordering::Relaxed};

/// Upper bounds (ms) of the step-time histogram buckets; the last is +Inf.
pub const BUCKETS_MS: [f64; 11] = [
    10.0,
    20.0,
    40.0,
    60.0,
    70.0,
    80.0,
    100.0,
    160.0,
    320.0,
    640.0,
    f64::INFINITY,
];
/// Step times kept for the median and p99 (the last ~82 s).
const RECENT: usize = 1024;

/// Stages of one step, timed in microseconds.
#[derive(Clone, Copy, Debug)]
pub enum Stage {
    CaptureWait,
    Encode,
    Embed,
    Backbone,
    Depth,
    Sample,
    Decode,
    Playback,
}

pub const STAGES: [(Stage, &str); 8] = [
    (Stage::CaptureWait, "capture_wait"),
    (Stage::Encode, "encode"),
    (Stage::Embed, "embed"),
    (Stage::Backbone, "backbone"),
    (Stage::Depth, "depth"),
    (Stage::Sample, "sample"),
    (Stage::Decode, "decode"),
    (Stage::Playback, "playback"),
];

pub struct Metrics {
    pub steps: AtomicU64,
    /// A model is being loaded again (SIGHUP): the watchdog is fed meanwhile.
    pub loading: AtomicBool,
    /// No audio source is running and none is owed (waiting for a network conversation, or
    /// for a network client's audio): the service is healthy without steps.
    pub idle: AtomicBool,
    /// Conversations over the network.
    pub remote: Remote,
    /// The local microphone's conversation is one of several in the step (its devices are
    /// in use whatever network conversations run beside it).
    pub local_in_step: AtomicBool,
    pub deadline_misses: AtomicU64,
    /// Consecutive steps that missed their deadline, now.
    pub consecutive_misses: AtomicU64,
    /// Captured frames dropped because the model was too far behind.
    pub capture_dropped: AtomicU64,
    /// Output slots played as silence because their frame was late or missing.
    pub playback_silent: AtomicU64,
    /// Events (text and state, for the event socket and the page) the step thread dropped
    /// because the event thread was behind and its queue full.
    pub events_dropped: AtomicU64,
    pub capture_xruns: AtomicU64,
    pub playback_xruns: AtomicU64,
    /// Successful recoveries from xruns and suspends.
    pub recoveries: AtomicU64,
    /// Devices opened again after they were lost.
    pub reopens: AtomicU64,
    /// Frames of silence that stood in for capture while the device was missing or after an
    /// xrun (the timeline goes on).
    pub capture_silence_frames: AtomicU64,
    /// Samples inserted or dropped to follow the playback device's clock.
    pub playback_slipped: AtomicU64,
    /// That correction now, in parts per billion (positive: more samples than the timeline).
    pub playback_clock_ppb: AtomicI64,
    pub capture_present: AtomicBool,
    pub playback_present: AtomicBool,
    /// errno of the last failed read or write of each device (0: none yet), for the log.
    pub capture_errno: AtomicI32,
    pub playback_errno: AtomicI32,
    /// Steps completed since the last watchdog ping.
    pub progress: AtomicU64,
    /// The echo canceller runs on the capture path.
    pub echo_active: AtomicBool,
    /// Its estimates, updated every second: echo return loss enhancement (hundredths of a
    /// dB; i64::MIN before the first) and the echo's delay (ms; -1 before the first).
    pub echo_erle_millibel: AtomicI64,
    pub echo_delay_ms: AtomicI32,
    /// Times the far end was re-aligned with the microphone, either way (each a jump in the
    /// canceller's reference: the two devices' reports drifted apart, or playback restarted).
    pub echo_realignments: AtomicU64,
    /// What the model hears is recorded (`--record-heard`): frames written to the file, and
    /// frames not written (the writer's ring full, or the file refused them).
    pub heard_active: AtomicBool,
    pub heard_frames: AtomicU64,
    pub heard_dropped: AtomicU64,
    /// The far end's rate at the microphone's clock, less 1 (parts per billion; learned by
    /// `far_clock`).
    pub echo_far_clock_ppb: AtomicI64,
    /// Blocks whose far end was not all there when the microphone's block was cancelled (the
    /// playback thread woke late): handed to the canceller partly silent.
    pub echo_far_short: AtomicU64,
    buckets: [AtomicU64; BUCKETS_MS.len()],
    step_sum_us: AtomicU64,
    step_max_us: AtomicU64,
    stage_sum_us: [AtomicU64; STAGES.len()],
    recent_us: [AtomicU64; RECENT],
}

/// Network conversations: totals, and the counts of the current (or last) one.
#[derive(Default)]
pub struct Remote {
    pub conversations: AtomicU64,
    /// Clients turned away because a conversation held the model.
    pub refused: AtomicU64,
    pub active: AtomicBool,
    /// Network conversations stepped together now (`server.max_conversations` > 1).
    pub in_step: AtomicU64,
    /// Frames of the current or last conversation: received (decoded) and sent, and packets
    /// that did not decode.
    pub frames_in: AtomicU64,
    pub frames_out: AtomicU64,
    pub decode_errors: AtomicU64,
    /// Deadline misses before the current conversation began (its late frames are the
    /// misses since), and its late frames once it has ended.
    pub misses_before: AtomicU64,
    pub late_at_end: AtomicU64,
}

impl Remote {
    /// Counts a conversation's beginning: its own counts start from zero.
    pub fn begin(&self, deadline_misses: u64) {
        for c in [&self.frames_in, &self.frames_out, &self.decode_errors] {
            c.store(0, Relaxed);
        }
        self.misses_before.store(deadline_misses, Relaxed);
        self.conversations.fetch_add(1, Relaxed);
        self.active.store(true, Relaxed);
    }

    pub fn end(&self, deadline_misses: u64) {
        self.late_at_end.store(self.late(deadline_misses), Relaxed);
        self.active.store(false, Relaxed);
    }

    /// Answers of the current (or last) conversation that missed their deadline.
    pub fn late(&self, deadline_misses: u64) -> u64 {
        if self.active.load(Relaxed) {
            deadline_misses.saturating_sub(self.misses_before.load(Relaxed))
        } else {
            self.late_at_end.load(Relaxed)
        }
    }
}

/// Median, p99 and maximum of the recent steps, in ms.
#[derive(Clone, Copy, Debug, Default)]
pub struct StepSummary {
    pub steps: u64,
    pub median: f64,
    pub p99: f64,
    pub max: f64,
}

impl Default for Metrics {
    fn default() -> Self {
        let z = || AtomicU64::new(0);
        Metrics {
            steps: z(),
            loading: AtomicBool::new(false),
            idle: AtomicBool::new(false),
            remote: Remote::default(),
            local_in_step: AtomicBool::new(false),
            deadline_misses: z(),
            consecutive_misses: z(),
            capture_dropped: z(),
            playback_silent: z(),
            events_dropped: z(),
            capture_xruns: z(),
            playback_xruns: z(),
            recoveries: z(),
            reopens: z(),
            capture_silence_frames: z(),
            playback_slipped: z(),
            playback_clock_ppb: AtomicI64::new(0),
            capture_present: AtomicBool::new(false),
            playback_present: AtomicBool::new(false),
            capture_errno: AtomicI32::new(0),
            playback_errno: AtomicI32::new(0),
            progress: z(),
            echo_active: AtomicBool::new(false),
            echo_erle_millibel: AtomicI64::new(i64::MIN),
            echo_delay_ms: AtomicI32::new(-1),
            echo_realignments: AtomicU64::new(0),
            heard_active: AtomicBool::new(false),
            heard_frames: z(),
            heard_dropped: z(),
            echo_far_clock_ppb: AtomicI64::new(0),
            echo_far_short: z(),
            buckets: std::array::from_fn(|_| z()),
            step_sum_us: z(),
            step_max_us: z(),
            stage_sum_us: std::array::from_fn(|_| z()),
            recent_us: std::array::from_fn(|_| z()),
        }
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        Metrics::default()
    }

    /// Where the audio comes from now, as STATUS and the page say it.
    pub fn source(&self) -> &'static str {
        let remote = self.remote.active.load(Relaxed);
        if self.local_in_step.load(Relaxed) {
            if remote {
                "local audio and network conversations"
            } else {
                "local audio"
            }
        } else if remote {
            "network conversation"
        } else if self.idle.load(Relaxed) {
            "waiting for a network client"
        } else {
            "local audio"
        }
    }

    /// The page's health line: the source, steps, deadline misses and faults, and whether
    /// the sound devices are there (null while they are not in use).
    pub fn health(&self) -> serde_json::Value {
        let source = self.source();
        let device = |present: &AtomicBool| {
            source
                .starts_with("local audio")
                .then(|| present.load(Relaxed))
        };
        serde_json::json!({ "health": {
            "source": source,
            "steps": self.steps.load(Relaxed),
            "deadline_misses": self.deadline_misses.load(Relaxed),
            "dropped": self.capture_dropped.load(Relaxed),
            "xruns": self.capture_xruns.load(Relaxed) + self.playback_xruns.load(Relaxed),
            "capture": device(&self.capture_present),
            "playback": device(&self.playback_present),
        }})
    }

    pub fn add(c: &AtomicU64) {
        c.fetch_add(1, Relaxed);
    }

    pub fn stage(&self, s: Stage, us: u64) {
        self.stage_sum_us[s as usize].fetch_add(us, Relaxed);
    }

    /// Records a completed step of `us` microseconds.
    pub fn step(&self, us: u64, missed: bool) {
        let n = self.steps.fetch_add(1, Relaxed);
        self.recent_us[n as usize % RECENT].store(us, Relaxed);
        self.step_sum_us.fetch_add(us, Relaxed);
        self.step_max_us.fetch_max(us, Relaxed);
        let ms = us as f64 / 1e3;
        let b = BUCKETS_MS
            .iter()
            .position(|&le| ms <= le)
            .unwrap_or(BUCKETS_MS.len() - 1);
        self.buckets[b].fetch_add(1, Relaxed);
        if missed {
            self.deadline_misses.fetch_add(1, Relaxed);
            self.consecutive_misses.fetch_add(1, Relaxed);
        } else {
            self.consecutive_misses.store(0, Relaxed);
        }
        self.progress.fetch_add(1, Relaxed);
    }

    /// The totals of a run, for its last log line (allocates: at the end only).
    pub fn totals(&self) -> String {
        let s = self.summary();
        let n = |c: &AtomicU64| c.load(Relaxed);
        format!(
            "{} steps; step median {:.1} ms, p99 {:.1} ms, max {:.1} ms; deadline misses {}; silent slots {}; dropped frames {}; xruns {}/{}; reopenings {}",
            s.steps,
            s.median,
            s.p99,
            s.max,
            n(&self.deadline_misses),
            n(&self.playback_silent),
            n(&self.capture_dropped),
            n(&self.capture_xruns),
            n(&self.playback_xruns),
            n(&self.reopens),
        )
    }

    /// Summary of the recent steps (allocates: for the status thread only).
    pub fn summary(&self) -> StepSummary {
        let steps = self.steps.load(Relaxed);
        let n = (steps as usize).min(RECENT);
        let mut v: Vec<u64> = self.recent_us[..n]
            .iter()
            .map(|a| a.load(Relaxed))
            .collect();
        v.sort_unstable();
        let at = |q: f64| {
            if v.is_empty() {
                0.0
            } else {
                v[((v.len() - 1) as f64 * q).round() as usize] as f64 / 1e3
            }
        };
        StepSummary {
            steps,
            median: at(0.5),
            p99: at(0.99),
            max: self.step_max_us.load(Relaxed) as f64 / 1e3,
        }
    }

    /// Prometheus text exposition format.
    pub fn render(&self) -> String {
        let mut o = String::with_capacity(4096);
        // One metric with one value, of a Prometheus `kind` (counter or gauge).
        let single = |o: &mut String, kind: &str, name: &str, help: &str, v: &dyn Display| {
            let _ = writeln!(
                o,
                "# HELP flm_edge_{name} {help}\n# TYPE flm_edge_{name} {kind}\nflm_edge_{name} {v}"
            );
        };
        let counter =
            |o: &mut String, name: &str, help: &str, v: u64| single(o, "counter", name, help, &v);
        let g = |a: &AtomicU64| a.load(Relaxed);
        counter(
            &mut o,
            "steps_total",
            "80 ms steps completed.",
            g(&self.steps),
        );
        counter(
            &mut o,
            "deadline_misses_total",
            "Steps that finished after their output was due.",
            g(&self.deadline_misses),
        );
        counter(
            &mut o,
            "capture_dropped_frames_total",
            "Captured frames dropped because the model was too far behind.",
            g(&self.capture_dropped),
        );
        counter(
            &mut o,
            "playback_silent_frames_total",
            "Output frames played as silence (late or missing).",
            g(&self.playback_silent),
        );
        counter(
            &mut o,
            "events_dropped_total",
            "Events (text, state) dropped because the event thread was behind.",
            g(&self.events_dropped),
        );
        counter(
            &mut o,
            "capture_silence_frames_total",
            "Silent frames standing in for capture (xrun, device missing).",
            g(&self.capture_silence_frames),
        );
        let _ = writeln!(
            o,
            "# HELP flm_edge_xruns_total ALSA over- and underruns.\n# TYPE flm_edge_xruns_total counter"
        );
        let _ = writeln!(
            o,
            "flm_edge_xruns_total{{dir=\"capture\"}} {}",
            g(&self.capture_xruns)
        );
        let _ = writeln!(
            o,
            "flm_edge_xruns_total{{dir=\"playback\"}} {}",
            g(&self.playback_xruns)
        );
        counter(
            &mut o,
            "recoveries_total",
            "Recoveries from xruns and suspends.",
            g(&self.recoveries),
        );
        counter(
            &mut o,
            "playback_slipped_samples_total",
            "Samples inserted or dropped to follow the playback device's clock.",
            g(&self.playback_slipped),
        );
        single(
            &mut o,
            "gauge",
            "playback_clock_correction_ppm",
            "Rate correction towards the playback device's clock, now.",
            &(self.playback_clock_ppb.load(Relaxed) as f64 / 1e3),
        );
        counter(
            &mut o,
            "device_reopens_total",
            "Audio devices opened again after they were lost.",
            g(&self.reopens),
        );
        let _ = writeln!(
            o,
            "# HELP flm_edge_device_present Whether the audio device is open.\n# TYPE flm_edge_device_present gauge"
        );
        for (dir, p) in [
            ("capture", &self.capture_present),
            ("playback", &self.playback_present),
        ] {
            let _ = writeln!(
                o,
                "flm_edge_device_present{{dir=\"{dir}\"}} {}",
                p.load(Relaxed) as u8
            );
        }
        single(
            &mut o,
            "gauge",
            "consecutive_deadline_misses",
            "Steps missed in a row, now.",
            &g(&self.consecutive_misses),
        );
        let _ = writeln!(
            o,
            "# HELP flm_edge_step_seconds Time of one 80 ms step, capture to output.\n# TYPE flm_edge_step_seconds histogram"
        );
        let mut cum = 0;
        for (i, le) in BUCKETS_MS.iter().enumerate() {
            cum += g(&self.buckets[i]);
            let le = if le.is_infinite() {
                "+Inf".to_string()
            } else {
                format!("{}", le / 1e3)
            };
            let _ = writeln!(o, "flm_edge_step_seconds_bucket{{le=\"{le}\"}} {cum}");
        }
        let _ = writeln!(
            o,
            "flm_edge_step_seconds_sum {}",
            g(&self.step_sum_us) as f64 / 1e6
        );
        let _ = writeln!(o, "flm_edge_step_seconds_count {}", g(&self.steps));
        if self.echo_active.load(Relaxed) {
            let erle = self.echo_erle_millibel.load(Relaxed);
            if erle != i64::MIN {
                single(
                    &mut o,
                    "gauge",
                    "echo_erle_db",
                    "Echo return loss enhancement of the echo canceller (AEC3's estimate).",
                    &(erle as f64 / 100.0),
                );
            }
            let delay = self.echo_delay_ms.load(Relaxed);
            if delay >= 0 {
                single(
                    &mut o,
                    "gauge",
                    "echo_delay_seconds",
                    "The echo's delay behind the far end that the canceller found.",
                    &(delay as f64 / 1e3),
                );
            }
            counter(
                &mut o,
                "echo_realignments_total",
                "Times the far end was re-aligned with the microphone, either way (a discontinuity: playback restarted after an xrun or a reopening, or the devices' delay reports jumped apart).",
                g(&self.echo_realignments),
            );
            single(
                &mut o,
                "gauge",
                "echo_far_clock_ppm",
                "The far end's rate at the microphone's clock, less 1, as learned (the loudspeaker's crystal against the microphone's; 0 on one card).",
                &(self.echo_far_clock_ppb.load(Relaxed) as f64 / 1e3),
            );
            counter(
                &mut o,
                "echo_far_short_total",
                "10 ms blocks whose far end had not all come when the microphone's block was cancelled (the playback thread woke late): the canceller got silence for the rest, and the far end kept its place.",
                g(&self.echo_far_short),
            );
        }
        if self.heard_active.load(Relaxed) {
            counter(
                &mut o,
                "heard_frames_total",
                "Frames the model was given that were written to the --record-heard file.",
                g(&self.heard_frames),
            );
            counter(
                &mut o,
                "heard_dropped_frames_total",
                "Frames the model was given that the --record-heard file did not get (its writer behind, or a write error).",
                g(&self.heard_dropped),
            );
        }
        let r = &self.remote;
        counter(
            &mut o,
            "conversations_total",
            "Network conversations begun.",
            g(&r.conversations),
        );
        counter(
            &mut o,
            "conversations_refused_total",
            "Network clients turned away because a conversation held the model.",
            g(&r.refused),
        );
        single(
            &mut o,
            "gauge",
            "conversation_active",
            "Whether a network conversation holds the model.",
            &(r.active.load(Relaxed) as u8),
        );
        let n = g(&r.in_step);
        single(
            &mut o,
            "gauge",
            "conversations_in_step",
            "Network conversations stepped together.",
            &n,
        );
        let late = r.late(g(&self.deadline_misses));
        for (name, help, v) in [
            ("frames_in", "80 ms frames received", g(&r.frames_in)),
            ("frames_out", "80 ms frames sent", g(&r.frames_out)),
            ("late_frames", "answers that missed their deadline", late),
            (
                "decode_errors",
                "audio packets that did not decode",
                g(&r.decode_errors),
            ),
        ] {
            single(
                &mut o,
                "gauge",
                &format!("conversation_{name}"),
                &format!("The current or last network conversation: {help}."),
                &v,
            );
        }
        let s = self.summary();
        let _ = writeln!(
            o,
            "# HELP flm_edge_step_recent_seconds Step time over the last 1024 steps.\n# TYPE flm_edge_step_recent_seconds gauge"
        );
        for (q, v) in [("0.5", s.median), ("0.99", s.p99), ("1", s.max)] {
            let _ = writeln!(
                o,
                "flm_edge_step_recent_seconds{{quantile=\"{q}\"}} {}",
                v / 1e3
            );
        }
        let _ = writeln!(
            o,
            "# HELP flm_edge_stage_seconds_total Time spent per stage.\n# TYPE flm_edge_stage_seconds_total counter"
        );
        for (s, name) in STAGES {
            let _ = writeln!(
                o,
                "flm_edge_stage_seconds_total{{stage=\"{name}\"}} {}",
                g(&self.stage_sum_us[s as usize]) as f64 / 1e6
            );
        }
        o
    }
}
