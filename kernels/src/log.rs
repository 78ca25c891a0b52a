//! ggml's and llama.cpp's log messages, taken in by one callback.
//!
//! Both libraries print every load step to stderr by default, and the CUDA backend reports a
//! missing driver only as a log message while it registers its devices. Here warnings and
//! errors are passed on to stderr with the library's name; while a `capture` is open,
//! every message (debug and info too) is kept for the caller instead, so that device
//! selection can fold ggml's reason into its own one-line error and a model load can read
//! where llama.cpp placed the tensors.

use std::ffi::{CStr, c_char, c_void};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, Once};

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
        eprint!("ggml: {text}");
    }
}

/// Routes ggml's log (and, through `callback_for_llama`, llama.cpp's) through this module.
/// Idempotent; call before anything touches ggml's device registry.
pub fn install() {
    INSTALL.call_once(|| {
        // SAFETY: the callback is a plain function that lives forever and touches only
        // this module's statics.
        unsafe { sys::ggml_log_set(Some(callback), std::ptr::null_mut()) };
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

/// Prints captured warnings and errors as they would have been printed.
pub fn pass_on(messages: &[Message]) {
    for m in messages.iter().filter(|m| m.level >= Level::Warn) {
        eprint!("ggml: {}", m.text);
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
