//! The converter's K-quant mixes against llama.cpp's own quantizer. A test binary of its own:
//! it replaces llama.cpp's log callback, which other tests' model loads rely on.

mod common;

use std::ffi::{CStr, CString, c_char, c_void};
use std::path::Path;

use common::*;
use flm_conversion::model_files::BACKBONE_FILE;
use flm_conversion::{GgmlType, Gguf};
use llama_cpp_sys_2 as sys;

/// llama.cpp logs every tensor it quantizes; keep its errors only.
unsafe extern "C" fn errors_only(level: sys::ggml_log_level, text: *const c_char, _: *mut c_void) {
    if level == sys::GGML_LOG_LEVEL_ERROR && !text.is_null() {
        // SAFETY: llama.cpp passes a NUL-terminated message that lives for this call.
        eprint!("{}", unsafe { CStr::from_ptr(text) }.to_string_lossy());
    }
}

/// llama.cpp's own quantizer (`llama_model_quantize`, as `llama-quantize` runs it) on the f16
/// backbone of a 28-layer model, the release's layer count, picks for every backbone tensor
/// the type the converter picks under q5_k, q4_k and q3_k, but for the text embedding, which
/// the converter stores at q8_0 on purpose (README, Quantization).
#[test]
fn k_quant_mixes_match_llama_cpp_quantize_for_28_layers() {
    let dir = scratch("llama-quantize");
    let spec = flm_testkit::LmSpec {
        layers: 28,
        ..flm_testkit::LmSpec::tiny()
    };
    flm_testkit::write_lm(&dir.join("lm"), &spec, 1).unwrap();
    let ck = Checkpoints {
        lm: dir.join("lm"),
        mimi: checkpoints(1).mimi.clone(),
    };
    // Mimi at f16: it is not compared, and each conversion writes it.
    let f16 = dir.join("f16");
    let args = |quant| ["--quant", quant, "--mimi-dtype", "f16"];
    assert!(convert(&ck, &f16, &args("f16")).status.success());
    // SAFETY: the only test of this binary; the callback is a plain function that lives
    // forever. llama_backend_init initialises ggml's tables.
    unsafe {
        sys::llama_log_set(Some(errors_only), std::ptr::null_mut());
        sys::llama_backend_init();
    }
    let path = |p: &Path| CString::new(p.to_str().unwrap()).unwrap();
    for (quant, ftype, base) in [
        ("q5_k", 17, GgmlType::Q5_K),
        ("q4_k", 15, GgmlType::Q4_K),
        ("q3_k", 12, GgmlType::Q3_K),
    ] {
        // Removed after each round (test data adds up).
        let ours = scratch(&format!("llama-quantize-{quant}"));
        assert!(convert(&ck, &ours, &args(quant)).status.success());
        let theirs = ours.join(format!("llama-{quant}.gguf"));
        let (src, dst) = (path(&f16.join(BACKBONE_FILE)), path(&theirs));
        // SAFETY: two NUL-terminated paths and llama.cpp's default parameters with the file
        // type set; no pointer in them is used beyond the call.
        let rc = unsafe {
            let mut params = sys::llama_model_quantize_default_params();
            params.ftype = ftype;
            params.nthread = 1;
            sys::llama_model_quantize(src.as_ptr(), dst.as_ptr(), &params)
        };
        assert_eq!(rc, 0, "{quant}: llama_model_quantize failed");
        let (a, b) = (
            Gguf::open(&ours.join(BACKBONE_FILE)).unwrap(),
            Gguf::open(&theirs).unwrap(),
        );
        assert_eq!(a.tensors.len(), b.tensors.len(), "{quant}");
        let mut upgraded = 0;
        for t in &a.tensors {
            let want = b.tensor(&t.name).unwrap().ty;
            if t.name == "token_embd.weight" {
                assert_eq!((t.ty, want), (GgmlType::Q8_0, base), "{quant}: {}", t.name);
                continue;
            }
            assert_eq!(t.ty, want, "{quant}: {}", t.name);
            upgraded += usize::from(t.ty != base && t.ty.is_quantized());
        }
        // The mixes really mix: the Q6_K head, attn_v and ffn_down in some layers (and
        // q3_k's attn_output): 1 + 2 × 14 for q5_k and q4_k, 1 + 28 × 3 for q3_k.
        let want = if quant == "q3_k" { 85 } else { 29 };
        assert_eq!(upgraded, want, "{quant}: tensors off the base type");
    }
}
