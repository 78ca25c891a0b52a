//! ggml's and llama.cpp's log messages, taken in by one callback.
//!
//! Both libraries print every load step to stderr by default, and the CUDA backend reports a
//! missing driver only as a log message while it registers its devices. Here warnings and
//! errors are passed on to stderr with the library's name; while a `capture` is open,
//! every message (debug and info too) is kept for the caller instead, so that device
//! selection can fold ggml's reason into its own one-line error and a model load can read
//! where llama.cpp placed the tensors.
//!
//! Outside a capture a message may come from the step thread (llama.cpp warns from inside a
//! decode): it goes into a fixed lock-free queue without allocating, and a thread of its own
//! writes it out, so the step never waits on stderr. A full queue drops (and counts) the
//! message rather than wait.

use std::ffi::{CStr, c_char, c_void};
use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, Once};
use std::time::Duration;

use llama_cpp_sys_2 as sys;

/// How severe a message is, as the library said.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Debug,
    Info,
    Warn,
    Error,
}

/// One message, its continuation lines joined.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    pub level: Level,
    pub text: String,
}

/// The most messages one capture keeps (a model load logs some hundreds at debug level).
const CAPTURE_MAX: usize = 4096;

/// A message on its way to stderr, cut to a fixed size.
type Line = heapless::String<256>;
/// Messages waiting for the writer thread. heapless marks its MPMC queue deprecated because a
/// producer pre-empted mid-operation can make others fail to enqueue for a while; here a
/// failed enqueue only drops (and counts) a log line, which is what a full queue does anyway.
#[expect(deprecated)]
static PENDING: heapless::mpmc::Queue<Line, 64> = heapless::mpmc::Queue::new();
/// Messages dropped because the queue was full.
static DROPPED: AtomicU64 = AtomicU64::new(0);

static INSTALL: Once = Once::new();
static CAPTURING: AtomicBool = AtomicBool::new(false);
static CAPTURED: Mutex<Vec<Message>> = Mutex::new(Vec::new());
/// Serialises captures: one load or device lookup at a time reads the log.
static CAPTURE_LOCK: Mutex<()> = Mutex::new(());

fn level_of(level: sys::ggml_log_level) -> Option<Level> {
    match level {
        sys::GGML_LOG_LEVEL_DEBUG => Some(Level::Debug),
        sys::GGML_LOG_LEVEL_INFO | sys::GGML_LOG_LEVEL_NONE => Some(Level::Info),
        sys::GGML_LOG_LEVEL_WARN => Some(Level::Warn),
        sys::GGML_LOG_LEVEL_ERROR => Some(Level::Error),
        _ => None, // GGML_LOG_LEVEL_CONT: continues the previous message
    }
}

unsafe extern "C" fn callback(level: sys::ggml_log_level, text: *const c_char, _: *mut c_void) {
    if text.is_null() {
        return;
    }
    // SAFETY: the libraries pass a NUL-terminated message that lives for this call.
    let text = unsafe { CStr::from_ptr(text) }.to_string_lossy();
    let level = level_of(level);
    if CAPTURING.load(Ordering::Acquire) {
        let Ok(mut kept) = CAPTURED.lock() else {
            return;
        };
        match level {
            // Progress dots say nothing.
            None if text.trim().chars().all(|c| c == '.') => {}
            None => {
                if let Some(last) = kept.last_mut() {
                    last.text.push_str(&text);
                }
            }
            Some(level) if kept.len() < CAPTURE_MAX => kept.push(Message {
                level,
                text: text.into_owned(),
            }),
            Some(_) => {}
        }
        return;
    }
    // Warnings and errors only; a continuation follows its message's fate, which is not
    // known here, so it is dropped (the libraries continue only progress dots).
    if matches!(level, Some(Level::Warn | Level::Error)) {
        post(&PENDING, &DROPPED, &text);
    }
}

/// Puts one message, cut to a line's size, on `queue`, or counts it in `dropped` when the
/// queue is full: never waits, never allocates.
fn post<const N: usize>(queue: &heapless::mpmc::Queue<Line, N>, dropped: &AtomicU64, text: &str) {
    let mut line = Line::new();
    for c in text.trim_end().chars() {
        if line.push(c).is_err() {
            break;
        }
    }
    if queue.enqueue(line).is_err() {
        dropped.fetch_add(1, Ordering::Relaxed);
    }
}

/// Writes what waits in the queue to stderr.
pub fn flush() {
    let mut out = String::new();
    while let Some(line) = PENDING.dequeue() {
        let _ = writeln!(out, "ggml: {line}");
    }
    let dropped = DROPPED.swap(0, Ordering::Relaxed);
    if dropped > 0 {
        let _ = writeln!(
            out,
            "ggml: {dropped} more messages dropped (the log queue was full)"
        );
    }
    if !out.is_empty() {
        eprint!("{out}");
    }
}

/// Routes ggml's log (and, through `callback_for_llama`, llama.cpp's) through this module.
/// Idempotent; call before anything touches ggml's device registry.
pub fn install() {
    INSTALL.call_once(|| {
        // SAFETY: the callback is a plain function that lives forever and touches only
        // this module's statics.
        unsafe { sys::ggml_log_set(Some(callback), std::ptr::null_mut()) };
        let _ = std::thread::Builder::new()
            .name("flm-ggml-log".into())
            .spawn(|| {
                loop {
                    std::thread::sleep(Duration::from_millis(50));
                    flush();
                }
            });
    });
}

/// The callback, for `llama_log_set` (which also sets ggml's).
pub fn callback_for_llama() -> sys::ggml_log_callback {
    Some(callback)
}

/// Runs `f` with every message it logs kept instead of printed, and returns them.
pub fn capture<R>(f: impl FnOnce() -> R) -> (R, Vec<Message>) {
    install();
    let _one = CAPTURE_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    CAPTURED.lock().unwrap_or_else(|e| e.into_inner()).clear();
    CAPTURING.store(true, Ordering::Release);
    let r = f();
    CAPTURING.store(false, Ordering::Release);
    let kept = std::mem::take(&mut *CAPTURED.lock().unwrap_or_else(|e| e.into_inner()));
    (r, kept)
}

/// Prints captured warnings and errors as they would have been printed (from a load, not
/// the step path).
pub fn pass_on(messages: &[Message]) {
    flush();
    for m in messages.iter().filter(|m| m.level >= Level::Warn) {
        eprintln!("ggml: {}", m.text.trim_end());
    }
}

/// The last error among `messages`, on one line.
pub fn last_error(messages: &[Message]) -> Option<String> {
    messages
        .iter()
        .rev()
        .find(|m| m.level == Level::Error)
        .map(|m| m.text.split_whitespace().collect::<Vec<_>>().join(" "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[expect(deprecated)]
    fn a_full_queue_drops_and_counts_instead_of_waiting() {
        // A queue of its own (the process-wide one is drained by the writer thread, which
        // another test may have started): 100 messages, faster than anything drains.
        let queue = heapless::mpmc::Queue::<Line, 64>::new();
        let dropped = AtomicU64::new(0);
        for i in 0..100 {
            post(&queue, &dropped, &format!("warning {i}\n"));
        }
        let mut kept = Vec::new();
        while let Some(line) = queue.dequeue() {
            kept.push(line);
        }
        assert_eq!(kept.len(), 64);
        assert_eq!(dropped.load(Ordering::Relaxed), 36);
        assert_eq!(kept[0].as_str(), "warning 0");
        assert_eq!(kept[63].as_str(), "warning 63");
    }

    #[test]
    fn a_long_message_is_cut_to_one_line_of_the_queue() {
        let line = "x".repeat(1000);
        #[expect(deprecated)]
        let queue = heapless::mpmc::Queue::<Line, 2>::new();
        let dropped = AtomicU64::new(0);
        post(&queue, &dropped, &line);
        assert_eq!(queue.dequeue().map(|l| l.len()), Some(256));
        assert_eq!(dropped.load(Ordering::Relaxed), 0);
    }
}
