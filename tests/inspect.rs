//! `flm-edge inspect` on our files, on files llama.cpp wrote, and on broken files.

mod common;

use std::ffi::CString;
use std::path::Path;

use common::*;
use flm_conversion::Gguf;

fn converted(name: &str) -> Scratch {
    let out = scratch(name);
    let run = convert(checkpoints(1), &out, &["--quant", "q4_k"]);
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    out
}

#[test]
fn lists_all_three_files_of_a_model_folder() {
    let out = converted("inspect-folder");
    let run = flm_edge(&["inspect", out.to_str().unwrap()]);
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let text = String::from_utf8_lossy(&run.stdout);
    for needle in [
        "backbone.gguf",
        "audio.gguf",
        "mimi.gguf",
        "general.architecture",
        "\"qwen2\"",
        "\"flm-audio\"",
        "\"mimi\"",
        "qwen2.attention.head_count_kv           2",
        "tokenizer.ggml.tokens                   [string × 152064]",
        "flm.token.text_wait",
        "blk.1.ffn_down.weight",
        "q6_K",
        "dep.output",
        "rvq.codebook",
        "totals by type:",
    ] {
        assert!(text.contains(needle), "inspect output lacks `{needle}`");
    }
    // The tensor table's byte column adds up to the per-type total.
    let g = Gguf::open(&out.join("mimi.gguf")).unwrap();
    let total: u64 = g.tensors.iter().map(|t| t.n_bytes()).sum();
    assert!(text.contains(&format!("{:>14} bytes", total)));
}

/// Loads our backbone with llama.cpp and saves it with llama.cpp's own GGUF writer.
fn resave_with_llama_cpp(src: &Path, dst: &Path) {
    let _ = flm_edge::llama::LlamaBackbone::load(src, &Default::default()).unwrap(); // initialises the backend
    let (s, d) = (
        CString::new(src.to_str().unwrap()).unwrap(),
        CString::new(dst.to_str().unwrap()).unwrap(),
    );
    // SAFETY: valid C strings; the model pointer is checked before use and freed once.
    unsafe {
        // Without the CPU repack buffers, whose tensors llama.cpp's writer cannot read back.
        let mut params = llama_cpp_sys_2::llama_model_default_params();
        params.use_extra_bufts = false;
        let model = llama_cpp_sys_2::llama_model_load_from_file(s.as_ptr(), params);
        assert!(!model.is_null());
        llama_cpp_sys_2::llama_model_save_to_file(model, d.as_ptr());
        llama_cpp_sys_2::llama_model_free(model);
    }
}

#[test]
fn reads_a_file_that_llama_cpp_wrote() {
    let out = converted("inspect-llama");
    let resaved = out.join("resaved.gguf");
    resave_with_llama_cpp(&out.join("backbone.gguf"), &resaved);
    let ours = Gguf::open(&out.join("backbone.gguf")).unwrap();
    let theirs = Gguf::open(&resaved).unwrap();
    assert_eq!(theirs.tensors.len(), ours.tensors.len());
    for t in &ours.tensors {
        let u = theirs.tensor(&t.name).unwrap();
        assert_eq!((u.ty, &u.ne), (t.ty, &t.ne), "{}", t.name);
    }
    assert_eq!(theirs.get_u64("qwen2.block_count").unwrap(), 2);
    let run = flm_edge(&["inspect", resaved.to_str().unwrap()]);
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    assert!(String::from_utf8_lossy(&run.stdout).contains("token_embd.weight"));
}

#[test]
fn broken_files_get_one_error_line() {
    let out = converted("inspect-broken");
    let good = std::fs::read(out.join("audio.gguf")).unwrap();
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("empty.gguf", vec![], "not a GGUF file"),
        (
            "magic.gguf",
            b"GGML\x03\x00\x00\x00"
                .iter()
                .copied()
                .chain(good[8..].iter().copied())
                .collect(),
            "not a GGUF file",
        ),
        ("cut-header.gguf", good[..5000].to_vec(), "truncated"),
        (
            "cut-data.gguf",
            good[..good.len() - 100].to_vec(),
            "truncated: tensor",
        ),
        (
            "version.gguf",
            [&good[..4], &99u32.to_le_bytes()[..], &good[8..]].concat(),
            "unsupported GGUF version 99",
        ),
        (
            "counts.gguf",
            [&good[..8], &u64::MAX.to_le_bytes()[..], &good[16..]].concat(),
            "corrupt header",
        ),
    ];
    for (name, bytes, needle) in cases {
        let p = out.join(name);
        std::fs::write(&p, bytes).unwrap();
        let run = flm_edge(&["inspect", p.to_str().unwrap()]);
        assert_one_line_error(&run, &[name, needle]);
    }
    let run = flm_edge(&["inspect", out.join("absent.gguf").to_str().unwrap()]);
    assert_one_line_error(&run, &["absent.gguf", "cannot open"]);
}
