//! Fixtures shared by the integration tests: seeded checkpoints in the released formats and
//! their conversions, made once per run under cargo's temporary folder for integration tests
//! and shared by every test binary.

#![allow(dead_code)]

pub mod conversations;
pub mod kiosk;
pub mod network_daemon;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use flm_testkit::{LmSpec, write_lm, write_mimi, write_silent_mimi};

/// A test's own folder, removed when the test is done with it (test data runs to gigabytes).
pub struct Scratch(PathBuf);

impl Scratch {
    /// Keeps the folder for the rest of the run (shared fixtures).
    pub fn keep(self) -> PathBuf {
        let p = self.0.clone();
        std::mem::forget(self);
        p
    }
}

impl std::ops::Deref for Scratch {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.0
    }
}

impl AsRef<Path> for Scratch {
    fn as_ref(&self) -> &Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A fresh, empty folder name for this test binary (the binary's root is emptied on first use).
pub fn scratch(name: &str) -> Scratch {
    static ROOT: OnceLock<PathBuf> = OnceLock::new();
    let root = ROOT.get_or_init(|| {
        let exe = std::env::current_exe().unwrap();
        let stem = exe.file_stem().unwrap().to_string_lossy().into_owned();
        let root = Path::new(env!("CARGO_TARGET_TMPDIR")).join(stem);
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(&root).unwrap();
        root
    });
    let p = root.join(name);
    let _ = std::fs::remove_dir_all(&p);
    Scratch(p)
}

pub struct Checkpoints {
    pub lm: PathBuf,
    pub mimi: PathBuf,
}

impl Checkpoints {
    /// The checkpoints of a fixture folder: `lm/` and `mimi.safetensors`.
    fn in_dir(dir: &Path) -> Checkpoints {
        Checkpoints {
            lm: dir.join("lm"),
            mimi: dir.join("mimi.safetensors"),
        }
    }
}

/// Fingerprint of what a shared fixture was made by: the test kit's sources, and for converted
/// models the `flm-edge` binary too, so that a fixture left by older code is never reused.
fn fingerprint(with_binary: bool) -> String {
    const KIT: &[&str] = &[
        include_str!("../testkit/src/lib.rs"),
        include_str!("../testkit/src/lm.rs"),
        include_str!("../testkit/src/mimi.rs"),
        include_str!("../testkit/src/rng.rs"),
        include_str!("../testkit/src/safetensors_out.rs"),
        include_str!("../testkit/src/tokenizer.rs"),
    ];
    // FNV-1a: stable across runs and binaries, unlike std's hasher.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut eat = |bytes: &[u8]| {
        for &b in bytes {
            h = (h ^ b as u64).wrapping_mul(0x100_0000_01b3);
        }
    };
    KIT.iter().for_each(|s| eat(s.as_bytes()));
    if with_binary {
        let meta = std::fs::metadata(env!("CARGO_BIN_EXE_flm-edge")).unwrap();
        let mtime = meta.modified().unwrap();
        let since = mtime.duration_since(std::time::UNIX_EPOCH).unwrap();
        eat(&meta.len().to_le_bytes());
        eat(&since.as_nanos().to_le_bytes());
    }
    format!("{h:016x}")
}

/// A fixture folder shared by every test binary of the run (checkpoints and converted models
/// run to gigabytes; one copy per binary filled the disk). `make` writes into a private
/// folder that is renamed into place when complete, so a binary running beside this one sees
/// either nothing or the whole fixture; fixtures of other fingerprints are removed first.
fn shared_fixture(name: &str, with_binary: bool, make: impl FnOnce(&Path)) -> PathBuf {
    let root = Path::new(env!("CARGO_TARGET_TMPDIR")).join("fixtures");
    std::fs::create_dir_all(&root).unwrap();
    let print = fingerprint(with_binary);
    let kind = if with_binary { "model" } else { "checkpoints" };
    let tag = format!("{kind}.{print}");
    for e in std::fs::read_dir(&root).unwrap().flatten() {
        let n = e.file_name().to_string_lossy().into_owned();
        if n.starts_with(&format!("{kind}.")) && !n.starts_with(&format!("{tag}.")) {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
    let dir = root.join(format!("{tag}.{name}"));
    if dir.exists() {
        return dir;
    }
    let partial = root.join(format!("partial.{}.{tag}.{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&partial);
    std::fs::create_dir_all(&partial).unwrap();
    make(&partial);
    if std::fs::rename(&partial, &dir).is_err() {
        // Another binary finished the same fixture first: theirs is as good as ours.
        assert!(dir.exists(), "fixture {} not made", dir.display());
        let _ = std::fs::remove_dir_all(&partial);
    }
    dir
}

/// The tiny FLM-Audio folder and the full-size Mimi checkpoint for `seed`.
pub fn checkpoints(seed: u64) -> &'static Checkpoints {
    static CACHE: OnceLock<std::sync::Mutex<Vec<(u64, &'static Checkpoints)>>> = OnceLock::new();
    let cache = CACHE.get_or_init(Default::default);
    let mut guard = cache.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((_, c)) = guard.iter().find(|(s, _)| *s == seed) {
        return c;
    }
    let dir = shared_fixture(&format!("seed-{seed}"), false, |d| {
        write_lm(&d.join("lm"), &LmSpec::tiny(), seed).unwrap();
        write_mimi(&d.join("mimi.safetensors"), seed).unwrap();
    });
    let c: &'static Checkpoints = Box::leak(Box::new(Checkpoints::in_dir(&dir)));
    guard.push((seed, c));
    c
}

/// The checkpoints of `seed` converted with `--quant quant` (shared, kept for the run).
pub fn converted(seed: u64, quant: &str) -> &'static Path {
    type Models = std::sync::Mutex<Vec<(u64, String, &'static Path)>>;
    static CACHE: OnceLock<Models> = OnceLock::new();
    let cache = CACHE.get_or_init(Default::default);
    let mut guard = cache.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((_, _, p)) = guard.iter().find(|(s, q, _)| *s == seed && q == quant) {
        return p;
    }
    let dir = converted_fixture(&format!("seed-{seed}-{quant}"), checkpoints(seed), quant);
    let p: &'static Path = Box::leak(dir.into_boxed_path());
    guard.push((seed, quant.to_string(), p));
    p
}

/// `ck` converted with `--quant quant` into the shared fixture `name`: its model folder.
fn converted_fixture(name: &str, ck: &Checkpoints, quant: &str) -> PathBuf {
    let dir = shared_fixture(name, true, |d| {
        let run = convert(ck, &d.join("model"), &["--quant", quant]);
        assert!(
            run.status.success(),
            "{}",
            String::from_utf8_lossy(&run.stderr)
        );
    });
    dir.join("model")
}

/// An engine on one thread with the model's sampling defaults (argmax when `greedy`).
pub fn engine(
    dir: &flm_edge::model_dir::ModelDir,
    greedy: bool,
    context: Option<u32>,
    sink: u32,
) -> flm_edge::engine::Engine {
    use flm_edge::engine::{Engine, EngineOptions, Sampling};
    let mut sampling = Sampling::from_model(&dir.audio, "audio.gguf").unwrap();
    if greedy {
        sampling = sampling.greedy();
    }
    let opts = EngineOptions {
        device: Default::default(),
        threads: 1,
        sampling,
        seed: 5,
        context,
        sink,
        kv_f32: None,
    };
    Engine::load(dir, &opts).unwrap()
}

/// The line of a bench's output that counts graph computes, copies and synchronisations.
pub fn counter_line(stdout: &str) -> &str {
    stdout
        .lines()
        .find(|l| l.contains("graph computes"))
        .unwrap_or_else(|| panic!("no counter line in: {stdout}"))
}

/// Runs the `flm-edge` binary.
pub fn flm_edge(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_flm-edge"))
        .args(args)
        .output()
        .expect("run flm-edge")
}

/// `flm-edge convert` of `ck` into `out`.
pub fn convert(ck: &Checkpoints, out: &Path, extra: &[&str]) -> Output {
    let mut args = vec![
        "convert",
        "--lm",
        ck.lm.to_str().unwrap(),
        "--mimi",
        ck.mimi.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    flm_edge(&args)
}

/// Asserts a failed run that printed exactly one error line containing every `needles`.
pub fn assert_one_line_error(out: &Output, needles: &[&str]) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "expected failure, stderr: {stderr}");
    let errors: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(errors.len(), 1, "expected one error line, stderr: {stderr}");
    assert!(!stderr.contains("panicked"), "panic: {stderr}");
    for n in needles {
        assert!(
            errors[0].contains(n),
            "error line lacks `{n}`: {}",
            errors[0]
        );
    }
}

/// Copies a folder (flat).
pub fn copy_dir(src: &Path, dst: &Path) {
    std::fs::create_dir_all(dst).unwrap();
    for e in std::fs::read_dir(src).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), dst.join(e.file_name())).unwrap();
    }
}

/// Rewrites the JSON header of a safetensors file, keeping its data bytes.
pub fn edit_safetensors_header(
    path: &Path,
    edit: impl FnOnce(&mut serde_json::Map<String, serde_json::Value>),
) {
    let bytes = std::fs::read(path).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let mut header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    edit(header.as_object_mut().unwrap());
    let mut text = serde_json::to_string(&header).unwrap();
    while !text.len().is_multiple_of(8) {
        text.push(' ');
    }
    let mut out = (text.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(text.as_bytes());
    out.extend_from_slice(&bytes[8 + n..]);
    std::fs::write(path, out).unwrap();
}

/// Absolute byte range of a tensor's data in a safetensors file.
pub fn tensor_range(path: &Path, name: &str) -> (usize, usize) {
    let bytes = std::fs::read(path).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    let off = &header[name]["data_offsets"];
    (
        8 + n + off[0].as_u64().unwrap() as usize,
        8 + n + off[1].as_u64().unwrap() as usize,
    )
}

/// Golden files of the Mimi codec (see tests/golden/mimi/README.md).
pub const GOLDEN_MIMI: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/golden/mimi");

/// The golden input clip, 24 kHz mono.
pub fn speech() -> Vec<f32> {
    let mut r = hound::WavReader::open(Path::new(GOLDEN_MIMI).join("speech.wav")).unwrap();
    r.samples::<i16>()
        .map(|s| s.unwrap() as f32 / 32768.0)
        .collect()
}

/// The reference decode of the golden codes.
pub fn golden_decoded() -> Vec<f32> {
    let bytes = std::fs::read(Path::new(GOLDEN_MIMI).join("decoded.npy")).unwrap();
    npyz::NpyFile::new(&bytes[..]).unwrap().into_vec().unwrap()
}

/// A WAV file's format and samples as f32 in [-1, 1].
pub fn read_wav(p: &Path) -> (hound::WavSpec, Vec<f32>) {
    let mut r = hound::WavReader::open(p).unwrap();
    let spec = r.spec();
    let pcm = match spec.sample_format {
        hound::SampleFormat::Float => r.samples::<f32>().map(Result::unwrap).collect(),
        hound::SampleFormat::Int => r
            .samples::<i32>()
            .map(|x| x.unwrap() as f32 / (1u32 << (spec.bits_per_sample - 1)) as f32)
            .collect(),
    };
    (spec, pcm)
}

/// Signal-to-noise ratio of `got` against `reference`, in dB (minus infinity for a NaN).
pub fn snr_db(reference: &[f32], got: &[f32]) -> f64 {
    assert_eq!(reference.len(), got.len());
    flm_edge::selftest::snr_db(reference, got)
}

/// The seed-3 small model at f32 (the LM golden one) with the full-size Mimi, loaded for the
/// real-time pipeline on 2 threads.
pub fn pipeline_model() -> flm_edge::serve::pipeline::Model {
    load_for_pipeline(converted(3, "f32"))
}

/// The model folder `dir` loaded for the real-time pipeline on 2 threads.
fn load_for_pipeline(dir: &Path) -> flm_edge::serve::pipeline::Model {
    let cfg = flm_edge::config::Config {
        model: Some(dir.to_path_buf()),
        threads: 2,
        ..Default::default()
    };
    flm_edge::serve::load_model(&cfg).unwrap()
}

/// The small model of seed 3 made to wait and say nothing whatever it hears (`LmSpec::waits`
/// and a silent Mimi decoder), at f32, loaded for the real-time pipeline on 2 threads.
pub fn silent_model() -> flm_edge::serve::pipeline::Model {
    let dir = shared_fixture("silent-seed-3", false, |d| {
        let spec = LmSpec {
            waits: true,
            ..LmSpec::tiny()
        };
        write_lm(&d.join("lm"), &spec, 3).unwrap();
        write_silent_mimi(&d.join("mimi.safetensors"), 3).unwrap();
    });
    let ck = Checkpoints::in_dir(&dir);
    load_for_pipeline(&converted_fixture("silent-seed-3-f32", &ck, "f32"))
}

/// Signals the daemon tests send.
pub const SIGHUP: i32 = 1;
pub const SIGTERM: i32 = 15;

/// A daemon under test, killed when the test ends, also when it fails part way (a daemon
/// left running would load the machine for the tests after it).
pub struct Reaped(pub std::process::Child);

impl std::ops::Deref for Reaped {
    type Target = std::process::Child;
    fn deref(&self) -> &std::process::Child {
        &self.0
    }
}

impl std::ops::DerefMut for Reaped {
    fn deref_mut(&mut self) -> &mut std::process::Child {
        &mut self.0
    }
}

impl Drop for Reaped {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// Waits (10 s at most) for a daemon told to stop; its exit status and stderr.
pub fn exit_of(child: &mut std::process::Child) -> (std::process::ExitStatus, String) {
    let t0 = Instant::now();
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "no exit after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    (status, err)
}

/// Sends `sig` to a child process.
pub fn signal(child: &std::process::Child, sig: i32) {
    unsafe extern "C" {
        fn kill(pid: i32, sig: i32) -> i32;
    }
    // SAFETY: sends a signal to our own child process, which is still running.
    assert_eq!(unsafe { kill(child.id() as i32, sig) }, 0, "kill {sig}");
}

/// The Python that `.ci/install-deps` sets up under target/ (the official client's libraries,
/// pyroomacoustics, Playwright); it may not be there yet.
pub fn python_env_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("target/pyclient/bin/python")
}

/// That Python, which must be there.
pub fn python_env() -> PathBuf {
    let py = python_env_path();
    assert!(
        py.exists(),
        "{} is missing: run .ci/install-deps (it makes the tests' Python environment)",
        py.display()
    );
    py
}

/// The simulated rooms of `tests/aec/rooms.py` (seeded), written into `dir`.
pub fn simulated_rooms(dir: &Path) {
    simulated_rooms_with(dir, None)
}

/// The same, and given the model's reply (a WAV), the harder rooms too (rooms.py's MORE:
/// needs espeak-ng, which `.ci/install-deps` installs).
pub fn simulated_rooms_with(dir: &Path, model_reply: Option<&Path>) {
    let out = Command::new(python_env())
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/aec/rooms.py"))
        .arg(Path::new(GOLDEN_MIMI).join("speech.wav"))
        .arg(dir)
        .args(model_reply)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Two alsa-lib PCMs, `{name}_capture` and `{name}_playback`: `file` plugins over a `null`
/// slave whose files are named pipes in `dir` (returned: capture's, playback's), set up for
/// this test binary. alsa-lib reads its configuration once per process: one such test per
/// file.
pub fn pipe_pcms(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    std::fs::create_dir_all(dir.join("alsa")).unwrap();
    let (cap, play) = (dir.join("capture.pipe"), dir.join("playback.pipe"));
    for pipe in [&cap, &play] {
        let ok = Command::new("mkfifo").arg(pipe).status().unwrap().success();
        assert!(ok, "mkfifo {}", pipe.display());
    }
    std::fs::write(
        dir.join("alsa/asoundrc"),
        format!(
            "pcm.{name}_capture {{ type file slave.pcm \"null\" file \"/dev/null\" infile \"{}\" format \"raw\" }}\n\
             pcm.{name}_playback {{ type file slave.pcm \"null\" file \"{}\" format \"raw\" }}\n",
            cap.display(),
            play.display()
        ),
    )
    .unwrap();
    // SAFETY: the tests that call this do so before any of their threads reads the
    // environment or opens ALSA.
    unsafe { std::env::set_var("XDG_CONFIG_HOME", dir) };
    (cap, play)
}

/// Ends the test process, naming `what`, if it is still running after `limit`: a real-time
/// run that never stops must fail its test, not hang it.
pub fn watchdog(limit: Duration, what: &'static str) {
    std::thread::spawn(move || {
        std::thread::sleep(limit);
        eprintln!("{what} did not end within {} s", limit.as_secs());
        std::process::exit(1);
    });
}

/// Runs the real-time pipeline on `capture` and `playback` for `seconds` (latency 6 frames,
/// room to spare on this machine; a backlog of 15), then stops it.
pub fn run_pipeline_for(
    model: &mut flm_edge::serve::pipeline::Model,
    capture: &mut dyn flm_edge::serve::device::CaptureDevice,
    playback: &mut dyn flm_edge::serve::device::PlaybackDevice,
    metrics: &flm_edge::serve::metrics::Metrics,
    seconds: f64,
) {
    use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
    let stop = AtomicBool::new(false);
    std::thread::scope(|s| {
        s.spawn(|| {
            std::thread::sleep(Duration::from_secs_f64(seconds));
            stop.store(true, Relaxed);
        });
        let schedule = flm_edge::serve::pipeline::Schedule {
            latency_frames: 6,
            max_backlog_frames: 15,
            stall: None,
            fail: None,
        };
        flm_edge::serve::pipeline::run(model, capture, playback, schedule, metrics, &stop, None)
            .unwrap();
    });
}

/// A mono s16 device at `rate` with 20 ms periods, 4 to a buffer (the pipe PCMs' format).
pub fn pipe_spec(name: &str, rate: u32) -> flm_edge::serve::alsa_io::DeviceSpec {
    flm_edge::serve::alsa_io::DeviceSpec {
        name: name.into(),
        rate,
        channels: 1,
        format: "s16".into(),
        period_ms: 20,
        periods: 4,
    }
}

/// The dot product of two signals, in f64.
pub fn dot(a: &[f32], b: &[f32]) -> f64 {
    a.iter().zip(b).map(|(&x, &y)| x as f64 * y as f64).sum()
}

/// `out` as `a·x + b·y` by least squares: (a, b). (How much of a voice `x` and of an echo
/// `y` a canceller's output holds.)
pub fn fit_two(out: &[f32], x: &[f32], y: &[f32]) -> (f64, f64) {
    let (xx, yy, xy) = (dot(x, x), dot(y, y), dot(x, y));
    let (xo, yo) = (dot(x, out), dot(y, out));
    let det = xx * yy - xy * xy;
    ((xo * yy - yo * xy) / det, (yo * xx - xo * xy) / det)
}

/// A loopback port nobody listens on now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A tokio runtime on this thread, for a test's clients.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// One HTTP/1.1 request (the connection closed after it), its whole answer (5 s at most).
pub fn http(addr: std::net::SocketAddr, request: &str) -> String {
    use std::io::{Read, Write};
    let request = request.replacen("\r\n", "\r\nConnection: close\r\n", 1);
    let mut c = std::net::TcpStream::connect(addr).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    c.write_all(request.as_bytes()).unwrap();
    let mut reply = String::new();
    let _ = c.read_to_string(&mut reply);
    reply
}
