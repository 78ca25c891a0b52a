//! A ggml abort (a CUDA error on the device, a failed assertion) ends the process at once,
//! from inside ggml: no Rust error travels up. Installed, this module's abort callback first
//! writes what ggml logged and one line naming the frame and the stage that were running:
//!
//!   error: ggml aborted in frame 1234, stage model step: ggml-cuda.cu:88: CUDA error
//!
//! The pipeline and the self-test say where they are with [`at`]: two relaxed atomic stores,
//! nothing the step would notice.

use std::ffi::{CStr, c_char};
use std::sync::Once;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering::Relaxed};

use llama_cpp_sys_2 as sys;

/// What was running.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Stage {
    Load = 1,
    MimiEncode,
    ModelStep,
    MimiDecode,
    SelftestMimi,
    SelftestSteps,
}

impl Stage {
    fn name(code: u8) -> &'static str {
        match code {
            1 => "loading the model",
            2 => "Mimi encode",
            3 => "model step",
            4 => "Mimi decode",
            5 => "self-test: Mimi",
            6 => "self-test: steps",
            _ => "none",
        }
    }
}

const NO_FRAME: u64 = u64::MAX;
static FRAME: AtomicU64 = AtomicU64::new(NO_FRAME);
static STAGE: AtomicU8 = AtomicU8::new(0);
static INSTALL: Once = Once::new();

/// Records where the process is: `frame` (or none) and the stage.
pub fn at(frame: Option<u64>, stage: Stage) {
    FRAME.store(frame.unwrap_or(NO_FRAME), Relaxed);
    STAGE.store(stage as u8, Relaxed);
}

/// The line written when ggml aborts.
fn line(message: &str) -> String {
    let stage = Stage::name(STAGE.load(Relaxed));
    match FRAME.load(Relaxed) {
        NO_FRAME => format!("error: ggml aborted, stage {stage}: {message}"),
        f => format!("error: ggml aborted in frame {f}, stage {stage}: {message}"),
    }
}

extern "C" fn on_abort(message: *const c_char) {
    let message = if message.is_null() {
        "(no message)".into()
    } else {
        // SAFETY: ggml passes a NUL-terminated buffer that lives for the call.
        unsafe { CStr::from_ptr(message) }.to_string_lossy()
    };
    // What ggml logged before it gave up (a CUDA error's function and call) comes first.
    flm_kernels::log::flush();
    eprintln!("{}", line(message.trim_end()));
    // ggml calls abort() when this returns.
}

/// Installs the abort callback (once per process).
pub fn install() {
    INSTALL.call_once(|| {
        // SAFETY: the callback is a plain function that lives forever and touches only this
        // module's atomics, the log queue and stderr.
        unsafe { sys::ggml_set_abort_callback(Some(on_abort)) };
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_line_names_the_frame_and_the_stage() {
        at(Some(41), Stage::MimiDecode);
        assert_eq!(
            line("ggml-cuda.cu:88: CUDA error"),
            "error: ggml aborted in frame 41, stage Mimi decode: ggml-cuda.cu:88: CUDA error"
        );
        at(None, Stage::Load);
        assert_eq!(line("x"), "error: ggml aborted, stage loading the model: x");
    }

    /// A real abort, in a child process (this test binary run again for this test alone).
    #[test]
    fn a_ggml_abort_leaves_one_line_then_the_process_ends() {
        if std::env::var_os("FLM_EDGE_ABORT_CHILD").is_some() {
            install();
            at(Some(7), Stage::ModelStep);
            // SAFETY: ggml_abort's own format and arguments: "%s" with one C string.
            unsafe { sys::ggml_abort(c"test.cu".as_ptr(), 12, c"%s".as_ptr(), c"forced".as_ptr()) };
        }
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "serve::abort::tests::a_ggml_abort_leaves_one_line_then_the_process_ends",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("FLM_EDGE_ABORT_CHILD", "1")
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(out.status.signal(), Some(6), "SIGABRT expected: {err}");
        let lines: Vec<&str> = err.lines().filter(|l| l.contains("ggml aborted")).collect();
        assert_eq!(
            lines,
            ["error: ggml aborted in frame 7, stage model step: test.cu:12: forced"],
            "{err}"
        );
    }
}
