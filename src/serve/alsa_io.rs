//! ALSA capture and playback, opened by PCM name, with the fault handling of the trusted
//! audio daemons: an xrun is recovered (prepare) and counted, and the lost time is filled with
//! silence; a suspend is resumed; a device that disappears (USB unplug) is reopened by name
//! with back-off, while silence keeps the timeline going.
//!
//! Buffers are sized at open; reading and writing a period allocates nothing.

use std::time::{Duration, Instant};

use alsa::pcm::{Access, Format, HwParams, PCM};
use alsa::{Direction, ValueOr};
use anyhow::{Context, Result, bail};
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering::Relaxed};

use super::clock_match::ClockMatch;
use super::device::{CaptureDevice, Captured, FRAME, Pcm, PlaybackDevice};
use super::echo_path::{EchoStage, FarEnd};
use super::metrics::Metrics;
use super::resample::StreamResampler;

const RATE: u32 = 24_000;
const FIRST_RETRY: Duration = Duration::from_millis(500);
const MAX_RETRY: Duration = Duration::from_secs(5);

#[derive(Clone, Debug)]
pub struct DeviceSpec {
    pub name: String,
    pub rate: u32,
    pub channels: u32,
    /// "s16", "s32" or "f32".
    pub format: String,
    pub period_ms: u32,
    pub periods: u32,
}

/// A fault to inject on a device's next read or write (errno; 0 for none): drills and tests
/// drive the real recovery code through it (EPIPE: xrun, ENODEV: device gone).
#[derive(Default)]
pub struct Drill(AtomicI32);

impl Drill {
    pub fn inject(&self, errno: i32) {
        self.0.store(errno, Relaxed);
    }

    fn take(&self) -> Option<alsa::Error> {
        match self.0.swap(0, Relaxed) {
            0 => None,
            e => Some(alsa::Error::new("drill", -e)),
        }
    }
}

enum Samples {
    S16(Vec<i16>),
    S32(Vec<i32>),
    F32(Vec<f32>),
}

/// An open PCM and its interleaved period buffer.
struct Open {
    pcm: PCM,
    raw: Samples,
    period: usize,
}

fn open(spec: &DeviceSpec, dir: Direction) -> Result<Open> {
    let label = &spec.name;
    let name = std::ffi::CString::new(label.as_str())
        .map_err(|_| anyhow::anyhow!("ALSA device `{label}`: the name holds a NUL byte"))?;
    // Opened and kept non-blocking: a blocking open waits, without end and deaf to SIGTERM,
    // for a device another program holds (here that is EBUSY, retried later), and a blocking
    // read or write waits without end on a device that stalls (here `transfer` waits at most
    // STALL, then the device counts as lost).
    let pcm = PCM::open(&name, dir, true).with_context(|| format!("ALSA device `{label}`"))?;
    let period = (spec.rate as usize * spec.period_ms as usize / 1000).max(16);
    let (format, raw) = match spec.format.as_str() {
        "s16" => (Format::s16(), Samples::S16(vec![])),
        "s32" => (Format::s32(), Samples::S32(vec![])),
        "f32" => (Format::float(), Samples::F32(vec![])),
        other => bail!("sample format `{other}` is not s16, s32 or f32"),
    };
    let period = {
        let hw = HwParams::any(&pcm).with_context(|| format!("ALSA device `{label}`"))?;
        let ctx = |what: &str| format!("ALSA device `{label}`: {what}");
        hw.set_access(Access::RWInterleaved)
            .with_context(|| ctx("no interleaved access"))?;
        hw.set_format(format)
            .with_context(|| ctx(&format!("format {} not supported", spec.format)))?;
        hw.set_channels(spec.channels)
            .with_context(|| ctx(&format!("{} channels not supported", spec.channels)))?;
        hw.set_rate(spec.rate, ValueOr::Nearest)
            .with_context(|| ctx(&format!("rate {} Hz not supported", spec.rate)))?;
        let got = hw.get_rate().with_context(|| ctx("rate"))?;
        if got != spec.rate {
            bail!(
                "ALSA device `{label}`: runs at {got} Hz, not {} Hz (use plughw: to convert)",
                spec.rate
            );
        }
        let p = hw
            .set_period_size_near(period as alsa::pcm::Frames, ValueOr::Nearest)
            .with_context(|| ctx("period size"))?;
        hw.set_buffer_size_near(p * spec.periods as alsa::pcm::Frames)
            .with_context(|| ctx("buffer size"))?;
        pcm.hw_params(&hw)
            .with_context(|| ctx("hardware parameters refused"))?;
        p as usize
    };
    let n = period * spec.channels as usize;
    let raw = match raw {
        Samples::S16(_) => Samples::S16(vec![0; n]),
        Samples::S32(_) => Samples::S32(vec![0; n]),
        Samples::F32(_) => Samples::F32(vec![0.0; n]),
    };
    pcm.prepare()
        .with_context(|| format!("ALSA device `{label}`: prepare"))?;
    Ok(Open { pcm, raw, period })
}

/// The longest a device may take to deliver or accept a period before it counts as lost
/// (closed, reopened with back-off): many periods, far beyond any scheduling hiccup.
const STALL_MS: u32 = 2000;

/// One read or write on a non-blocking PCM, waiting (at most STALL_MS) while the device has
/// no room or no data yet; a stalled device is an error like a vanished one (ETIMEDOUT).
fn transfer(pcm: &PCM, mut io: impl FnMut() -> alsa::Result<usize>) -> alsa::Result<usize> {
    loop {
        match io() {
            Err(e) if e.errno().abs() == EAGAIN => match pcm.wait(Some(STALL_MS)) {
                Ok(true) => {}
                Ok(false) => return Err(alsa::Error::new("snd_pcm_wait", -ETIMEDOUT)),
                Err(e) => return Err(e),
            },
            other => return other,
        }
    }
}

/// What an error means for the stream.
enum Fault {
    /// Over/underrun or suspend: recovered in place.
    Recovered,
    /// The device is gone or unusable: close and reopen later.
    Lost,
}

fn handle(o: &Open, e: alsa::Error, xruns: &std::sync::atomic::AtomicU64, m: &Metrics) -> Fault {
    // alsa-lib's negative codes arrive negated or not depending on the call: compare sizes.
    let errno = e.errno().abs();
    if errno == EPIPE {
        Metrics::add(xruns);
    }
    if (errno == EPIPE || errno == ESTRPIPE) && o.pcm.try_recover(e, true).is_ok() {
        Metrics::add(&m.recoveries);
        return Fault::Recovered;
    }
    Fault::Lost
}

// errno values of Linux: over/underrun, suspended, I/O error, no data or room yet, stalled.
const EPIPE: i32 = 32;
const EIO: i32 = 5;
const ESTRPIPE: i32 = 86;
const EAGAIN: i32 = 11;
const ETIMEDOUT: i32 = 110;

/// Reopening a lost device by name, with back-off.
struct Reopen {
    wait: Duration,
    next: Instant,
}

impl Reopen {
    fn new() -> Reopen {
        Reopen {
            wait: FIRST_RETRY,
            next: Instant::now(),
        }
    }
    fn failed(&mut self) {
        self.next = Instant::now() + self.wait;
        self.wait = (self.wait * 2).min(MAX_RETRY);
    }
    /// Opens `spec` again once the back-off allows, counting and flagging a success.
    fn attempt(
        &mut self,
        spec: &DeviceSpec,
        dir: Direction,
        present: &AtomicBool,
        m: &Metrics,
    ) -> Option<Open> {
        if Instant::now() < self.next {
            return None;
        }
        match open(spec, dir) {
            Ok(d) => {
                self.wait = FIRST_RETRY;
                Metrics::add(&m.reopens);
                present.store(true, Relaxed);
                Some(d)
            }
            Err(_) => {
                self.failed();
                None
            }
        }
    }
    /// A device that is gone (its handle dropped by the caller): flagged, retried later.
    fn lost(&mut self, present: &AtomicBool) {
        present.store(false, Relaxed);
        self.failed();
    }
}

pub struct AlsaCapture {
    spec: DeviceSpec,
    dev: Option<Open>,
    reopen: Reopen,
    mono: Vec<f32>,
    resampler: StreamResampler,
    acc: Pcm,
    acc_len: usize,
    /// 24 kHz samples of silence still owed to the timeline after an xrun.
    owed: usize,
    /// Where the owed silence has reached on the timeline: when the audio it stands for
    /// would have arrived.
    owed_until: Instant,
    /// When the last period was read: the length of an xrun is measured from it.
    last_read: Option<Instant>,
    /// Pace of silence frames while the device is missing.
    next_silence: Instant,
    /// The echo canceller, against what the playback device plays (`with_echo`).
    echo: Option<EchoStage>,
    pub drill: std::sync::Arc<Drill>,
}

impl AlsaCapture {
    /// Cancels the echo of what `FarEnd`'s playback device plays (at this device's rate).
    pub fn with_echo(self, echo: EchoStage) -> AlsaCapture {
        AlsaCapture {
            echo: Some(echo),
            ..self
        }
    }

    /// Opens `spec` now: a device that is missing at start is an error (a wrong name).
    pub fn open(spec: DeviceSpec, m: &Metrics) -> Result<AlsaCapture> {
        let dev = open(&spec, Direction::Capture)?;
        m.capture_present.store(true, Relaxed);
        let period = dev.period;
        Ok(AlsaCapture {
            resampler: StreamResampler::new(spec.rate, RATE, period)?,
            mono: vec![0.0; period],
            spec,
            dev: Some(dev),
            reopen: Reopen::new(),
            acc: [0.0; FRAME],
            acc_len: 0,
            owed: 0,
            owed_until: Instant::now(),
            last_read: None,
            next_silence: Instant::now(),
            echo: None,
            drill: Default::default(),
        })
    }

    /// Converts the first `n` samples of `mono` (the first captured at `at`), through the echo
    /// canceller when there is one; returns true when a frame completed into `out` (the rest
    /// stays for the next one). A period is at most 80 ms, and the canceller hands on as many
    /// samples as it takes, so at most one frame completes per call.
    fn add(&mut self, out: &mut Pcm, n: usize, at: Instant) -> bool {
        let (acc, acc_len) = (&mut self.acc, &mut self.acc_len);
        let mut done = false;
        let mut emit = |x: &[f32]| {
            for &v in x {
                acc[*acc_len] = v;
                *acc_len += 1;
                if *acc_len == FRAME {
                    debug_assert!(!done, "two frames in one period");
                    out.copy_from_slice(acc);
                    *acc_len = 0;
                    done = true;
                }
            }
        };
        let (mono, resampler) = (&self.mono[..n], &mut self.resampler);
        match &mut self.echo {
            Some(echo) => echo.process(mono, at, &mut |x| {
                let _ = resampler.push(x, &mut emit);
            }),
            None => {
                let _ = resampler.push(mono, &mut emit);
            }
        }
        done
    }

    /// Pays back time lost to an xrun as silence, in whole frames first: returns when the
    /// frame that `out` then holds would have been complete.
    fn silence_owed(&mut self, out: &mut Pcm) -> Option<Instant> {
        let room = FRAME - self.acc_len;
        if self.owed >= room {
            self.acc[self.acc_len..].fill(0.0);
            out.copy_from_slice(&self.acc);
            self.acc_len = 0;
            self.owed -= room;
            self.owed_until += Duration::from_secs_f64(room as f64 / RATE as f64);
            return Some(self.owed_until);
        }
        if self.owed > 0 {
            self.acc[self.acc_len..self.acc_len + self.owed].fill(0.0);
            self.acc_len += self.owed;
            self.owed = 0;
        }
        None
    }
}

impl CaptureDevice for AlsaCapture {
    fn next_frame(&mut self, out: &mut Pcm, m: &Metrics) -> Captured {
        loop {
            if let Some(at) = self.silence_owed(out) {
                return Captured::Lost(at);
            }
            let Some(dev) = self.dev.as_mut() else {
                let present = &m.capture_present;
                if let Some(d) = self
                    .reopen
                    .attempt(&self.spec, Direction::Capture, present, m)
                {
                    self.dev = Some(d);
                    self.last_read = None;
                    continue;
                }
                // Missing: silence at the real-time pace keeps the model's timeline going.
                let now = Instant::now();
                if self.next_silence > now {
                    std::thread::sleep(self.next_silence - now);
                }
                self.next_silence = self.next_silence.max(now) + Duration::from_millis(80);
                out.fill(0.0);
                return Captured::Silence;
            };
            let ch = self.spec.channels as usize;
            let (drill, pcm, raw) = (&self.drill, &dev.pcm, &mut dev.raw);
            let res = transfer(pcm, || match (drill.take(), &mut *raw) {
                (Some(e), _) => Err(e),
                // SAFETY: the PCM was opened with exactly this sample format (open()).
                (None, Samples::S16(b)) => unsafe { pcm.io_unchecked::<i16>() }.readi(b),
                // SAFETY: as above.
                (None, Samples::S32(b)) => unsafe { pcm.io_unchecked::<i32>() }.readi(b),
                // SAFETY: as above.
                (None, Samples::F32(b)) => unsafe { pcm.io_unchecked::<f32>() }.readi(b),
            });
            match res {
                // A blocking read that returns nothing: the source has stopped (a pipe whose
                // writer left). Spinning on it would never end; it is a lost device.
                Ok(0) => {
                    m.capture_errno.store(EIO, Relaxed);
                    self.lose(m);
                }
                Ok(frames) => {
                    let n = frames.min(dev.period);
                    mix_down(&dev.raw, ch, &mut self.mono[..n]);
                    let now = Instant::now();
                    self.last_read = Some(now);
                    self.next_silence = now;
                    // When the period's first sample came in: it, the rest of the period and
                    // what the device holds still (its delay report) came in before now.
                    let at = match &self.echo {
                        Some(_) => {
                            let held = dev.pcm.delay().unwrap_or(0).max(0) as usize;
                            let rate = self.spec.rate as f64;
                            now.checked_sub(Duration::from_secs_f64((n + held) as f64 / rate))
                                .unwrap_or(now)
                        }
                        None => now,
                    };
                    if self.add(out, n, at) {
                        return Captured::Audio;
                    }
                }
                Err(e) => {
                    m.capture_errno.store(e.errno().abs(), Relaxed);
                    match handle(dev, e, &m.capture_xruns, m) {
                        Fault::Recovered => {
                            // The time lost in the xrun is owed as silence (at most 2 s), so
                            // that the frames keep their place on the timeline.
                            let lost = self
                                .last_read
                                .map_or(0.0, |t| t.elapsed().as_secs_f64())
                                .min(2.0);
                            if self.owed == 0 {
                                self.owed_until = Instant::now() - Duration::from_secs_f64(lost);
                            }
                            self.owed += (lost * RATE as f64) as usize;
                            let _ = dev.pcm.start();
                            self.last_read = Some(Instant::now());
                        }
                        Fault::Lost => self.lose(m),
                    }
                }
            }
        }
    }
}

impl AlsaCapture {
    /// Closes a device that is gone; it is reopened with back-off, silence stands in.
    fn lose(&mut self, m: &Metrics) {
        self.dev = None;
        self.reopen.lost(&m.capture_present);
        self.next_silence = Instant::now();
    }
}

/// Interleaved device samples to mono f32 in [-1, 1].
fn mix_down(raw: &Samples, ch: usize, mono: &mut [f32]) {
    let n = mono.len();
    let scale = 1.0 / ch as f32;
    match raw {
        Samples::S16(b) => {
            for (i, m) in mono.iter_mut().enumerate().take(n) {
                *m = b[i * ch..(i + 1) * ch]
                    .iter()
                    .map(|&x| x as f32 / 32768.0)
                    .sum::<f32>()
                    * scale;
            }
        }
        Samples::S32(b) => {
            for (i, m) in mono.iter_mut().enumerate().take(n) {
                *m = b[i * ch..(i + 1) * ch]
                    .iter()
                    .map(|&x| x as f32 / 2147483648.0)
                    .sum::<f32>()
                    * scale;
            }
        }
        Samples::F32(b) => {
            // A float device may hand out anything: NaN and out-of-range values are not
            // passed on.
            for (i, m) in mono.iter_mut().enumerate().take(n) {
                let v = b[i * ch..(i + 1) * ch].iter().sum::<f32>() * scale;
                *m = if v.is_finite() {
                    v.clamp(-1.0, 1.0)
                } else {
                    0.0
                };
            }
        }
    }
}

pub struct AlsaPlayback {
    spec: DeviceSpec,
    dev: Option<Open>,
    reopen: Reopen,
    resampler: StreamResampler,
    /// Keeps the device's fill steady when its clock is not the capture device's.
    clock: ClockMatch,
    /// Device-rate mono samples waiting to be written.
    pending: Vec<f32>,
    frame: Pcm,
    /// Whether the device holds its headroom: false after opening and after an underrun.
    primed: bool,
    /// Where what is played goes as the echo canceller's reference (`with_echo`).
    far: Option<FarEnd>,
    pub drill: std::sync::Arc<Drill>,
}

/// Periods of silence queued ahead of the first frame after the device (re)starts: frames
/// are written when due, so this is what absorbs the playback thread's wake-up jitter.
const HEADROOM_PERIODS: usize = 2;

impl AlsaPlayback {
    pub fn open(spec: DeviceSpec, m: &Metrics) -> Result<AlsaPlayback> {
        let dev = open(&spec, Direction::Playback)?;
        m.playback_present.store(true, Relaxed);
        let cap = (spec.rate as usize * 80 / 1000) * 4 + 4096;
        let resampler = StreamResampler::new(RATE, spec.rate, FRAME)?;
        Ok(AlsaPlayback {
            clock: ClockMatch::new(spec.rate as usize * 80 / 1000, resampler.chunk_out())?,
            resampler,
            spec,
            dev: Some(dev),
            reopen: Reopen::new(),
            pending: Vec::with_capacity(cap),
            frame: [0.0; FRAME],
            primed: false,
            far: None,
            drill: Default::default(),
        })
    }

    /// Hands every sample written to the device, and when it plays, to the echo canceller.
    pub fn with_echo(self, far: FarEnd) -> AlsaPlayback {
        AlsaPlayback {
            far: Some(far),
            ..self
        }
    }

    /// Writes `pending` whole periods to the device; keeps the remainder.
    fn write_pending(&mut self, m: &Metrics) {
        loop {
            let Some(dev) = self.dev.as_mut() else {
                self.pending.clear();
                return;
            };
            let ch = self.spec.channels as usize;
            if !self.primed {
                // Within capacity only (no allocation); a device failing again and again
                // gets no more than that.
                let h = HEADROOM_PERIODS * dev.period;
                if self.pending.len() + h <= self.pending.capacity() {
                    self.pending.splice(0..0, std::iter::repeat_n(0.0, h));
                }
                self.primed = true;
                self.clock.restart();
            }
            if self.pending.len() < dev.period {
                return;
            }
            let period = dev.period;
            spread(&self.pending[..period], ch, &mut dev.raw);
            // What the device queues ahead of this period (its delay report): when it plays.
            let plays_at = self.far.as_ref().map(|_| {
                let queued = dev.pcm.delay().unwrap_or(0).max(0) as f64;
                Instant::now() + Duration::from_secs_f64(queued / self.spec.rate as f64)
            });
            let (drill, pcm, raw) = (&self.drill, &dev.pcm, &dev.raw);
            let res = transfer(pcm, || match (drill.take(), raw) {
                (Some(e), _) => Err(e),
                // SAFETY: the PCM was opened with exactly this sample format (open()).
                (None, Samples::S16(b)) => unsafe { pcm.io_unchecked::<i16>() }.writei(b),
                // SAFETY: as above.
                (None, Samples::S32(b)) => unsafe { pcm.io_unchecked::<i32>() }.writei(b),
                // SAFETY: as above.
                (None, Samples::F32(b)) => unsafe { pcm.io_unchecked::<f32>() }.writei(b),
            });
            match res {
                Ok(n) => {
                    let n = n.min(period);
                    if let (Some(far), Some(at)) = (&mut self.far, plays_at) {
                        far.played(&self.pending[..n], at);
                    }
                    self.pending.drain(..n);
                }
                Err(e) => {
                    m.playback_errno.store(e.errno().abs(), Relaxed);
                    match handle(dev, e, &m.playback_xruns, m) {
                        // Restarted empty: the headroom goes in again before what is pending.
                        Fault::Recovered => self.primed = false,
                        Fault::Lost => {
                            self.dev = None;
                            self.reopen.lost(&m.playback_present);
                        }
                    }
                }
            }
        }
    }

    fn queue(&mut self, pcm: &Pcm, m: &Metrics) {
        let (pending, clock) = (&mut self.pending, &mut self.clock);
        let mut slipped = 0;
        let _ = self.resampler.push(pcm, &mut |x: &[f32]| {
            slipped += clock.process(x, pending).unsigned_abs();
        });
        m.playback_slipped.fetch_add(slipped, Relaxed);
        let ppb = ((self.clock.ratio() - 1.0) * 1e9).round() as i64;
        m.playback_clock_ppb.store(ppb, Relaxed);
    }

    /// The device's fill when a frame is due: what it still has to play and what waits for
    /// a whole period.
    fn observe_fill(&mut self) {
        if !self.primed {
            return;
        }
        if let Some(dev) = &self.dev
            && let Ok(delay) = dev.pcm.delay()
        {
            self.clock.observe(delay, self.pending.len());
        }
    }
}

/// Mono f32 to interleaved device samples (the same on every channel).
fn spread(mono: &[f32], ch: usize, raw: &mut Samples) {
    for (i, &v) in mono.iter().enumerate() {
        let v = v.clamp(-1.0, 1.0);
        for c in 0..ch {
            match raw {
                Samples::S16(b) => b[i * ch + c] = (v * 32767.0) as i16,
                Samples::S32(b) => b[i * ch + c] = (v as f64 * 2147483647.0) as i32,
                Samples::F32(b) => b[i * ch + c] = v,
            }
        }
    }
}

impl PlaybackDevice for AlsaPlayback {
    fn play_frame(&mut self, fill: &mut dyn FnMut(&mut Pcm), m: &Metrics) -> bool {
        if self.dev.is_none()
            && let Some(d) =
                self.reopen
                    .attempt(&self.spec, Direction::Playback, &m.playback_present, m)
        {
            self.dev = Some(d);
            self.primed = false;
        }
        if self.dev.is_none() {
            // Missing: the frame is taken when due (the pipeline paces) and dropped.
            fill(&mut self.frame);
            return true;
        }
        let mut frame = self.frame;
        fill(&mut frame);
        self.observe_fill();
        self.queue(&frame, m);
        self.write_pending(m);
        true
    }
}

/// PCM names and cards that `capture` / `playback` may name.
pub fn list_devices() -> Result<String> {
    use std::fmt::Write as _;
    let mut o = String::new();
    writeln!(o, "cards (use hw:CARD=ID,DEV=0 or plughw:CARD=ID):")?;
    let mut any = false;
    for card in alsa::card::Iter::new() {
        let Ok(card) = card else { continue };
        any = true;
        let ctl = alsa::ctl::Ctl::from_card(&card, false);
        let id = ctl
            .as_ref()
            .ok()
            .and_then(|c| c.card_info().ok())
            .and_then(|i| i.get_id().ok().map(str::to_string))
            .unwrap_or_default();
        writeln!(
            o,
            "  CARD={id:<16} {}",
            card.get_longname().unwrap_or_default()
        )?;
    }
    if !any {
        writeln!(o, "  (none)")?;
    }
    writeln!(o, "PCMs (names usable as they are):")?;
    if let Ok(hints) = alsa::device_name::HintIter::new_str(None, "pcm") {
        for h in hints {
            let name = h.name.unwrap_or_default();
            let dir = match h.direction {
                Some(Direction::Capture) => "capture",
                Some(Direction::Playback) => "playback",
                None => "both",
            };
            let desc = h.desc.unwrap_or_default().replace('\n', " — ");
            writeln!(o, "  {name:<32} {dir:<8} {desc}")?;
        }
    }
    Ok(o)
}
