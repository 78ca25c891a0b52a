//! Every kind of bad input to `flm-edge convert` gets one clear error line naming the file
//! and the problem, a non-zero exit, and leaves no model behind.

mod common;

use std::path::{Path, PathBuf};

use common::*;
use serde_json::json;

/// A private copy of the seed-1 language model folder to break (the Mimi checkpoint is
/// shared; `copy_mimi` gives a private copy of it to break instead).
fn copy_checkpoints(name: &str) -> (Scratch, Checkpoints) {
    let src = checkpoints(1);
    let dir = scratch(name);
    let lm = dir.join("lm");
    copy_dir(&src.lm, &lm);
    (
        dir,
        Checkpoints {
            lm,
            mimi: src.mimi.clone(),
        },
    )
}

fn copy_mimi(name: &str) -> (Scratch, Checkpoints) {
    let src = checkpoints(1);
    let dir = scratch(name);
    std::fs::create_dir_all(&*dir).unwrap();
    let mimi = dir.join("mimi.safetensors");
    std::fs::copy(&src.mimi, &mimi).unwrap();
    (
        dir,
        Checkpoints {
            lm: src.lm.clone(),
            mimi,
        },
    )
}

/// Runs convert on broken checkpoints and checks the error and that no model was left.
fn expect_error(dir: &Path, ck: &Checkpoints, needles: &[&str]) {
    let out = dir.join("model");
    let run = convert(ck, &out, &["--quant", "q8_0"]);
    assert_one_line_error(&run, needles);
    assert!(
        !out.exists(),
        "output folder left behind after: {}",
        String::from_utf8_lossy(&run.stderr)
    );
}

fn weights(ck: &Checkpoints) -> PathBuf {
    ck.lm.join("model.safetensors")
}

#[test]
fn missing_files() {
    let (dir, ck) = copy_checkpoints("missing-files");
    std::fs::remove_file(ck.lm.join("config.json")).unwrap();
    expect_error(&dir, &ck, &["config.json", "cannot read"]);
    let (dir, ck) = copy_checkpoints("missing-weights");
    std::fs::remove_file(weights(&ck)).unwrap();
    expect_error(&dir, &ck, &["no model.safetensors"]);
    let (dir, mut ck) = copy_checkpoints("missing-mimi");
    ck.mimi = dir.join("nope.safetensors");
    expect_error(&dir, &ck, &["nope.safetensors", "cannot open"]);
    let (dir, ck) = copy_checkpoints("missing-tokenizer");
    std::fs::remove_file(ck.lm.join("tokenizer.json")).unwrap();
    expect_error(&dir, &ck, &["tokenizer.json", "cannot read"]);
}

#[test]
fn truncated_safetensors() {
    let (dir, ck) = copy_checkpoints("truncated");
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(weights(&ck))
        .unwrap();
    let len = f.metadata().unwrap().len();
    f.set_len(len - 1000).unwrap();
    expect_error(&dir, &ck, &["model.safetensors", "truncated"]);
    // Cut inside the header.
    let (dir, ck) = copy_mimi("truncated-header");
    std::fs::OpenOptions::new()
        .write(true)
        .open(&ck.mimi)
        .unwrap()
        .set_len(100)
        .unwrap();
    expect_error(&dir, &ck, &["mimi.safetensors", "truncated"]);
    // Empty file.
    let (dir, ck) = copy_mimi("empty");
    std::fs::write(&ck.mimi, b"").unwrap();
    expect_error(&dir, &ck, &["mimi.safetensors", "not a safetensors file"]);
}

#[test]
fn bad_json_header() {
    let (dir, ck) = copy_checkpoints("bad-json");
    let mut bytes = std::fs::read(weights(&ck)).unwrap();
    assert_eq!(bytes[8], b'{');
    bytes[8] = b'x';
    std::fs::write(weights(&ck), bytes).unwrap();
    expect_error(&dir, &ck, &["model.safetensors", "bad JSON header"]);
}

#[test]
fn data_offsets_out_of_range_or_overlapping() {
    let (dir, ck) = copy_checkpoints("offsets-range");
    edit_safetensors_header(&weights(&ck), |h| {
        let t = h.get_mut("model.norm.weight").unwrap();
        let end = t["data_offsets"][1].as_u64().unwrap();
        t["data_offsets"][1] = json!((end + 1) << 40);
    });
    expect_error(&dir, &ck, &["model.safetensors", "model.norm.weight"]);
    let (dir, ck) = copy_checkpoints("offsets-overlap");
    edit_safetensors_header(&weights(&ck), |h| {
        let start = h["model.layers.0.input_layernorm.weight"]["data_offsets"][0].clone();
        let t = h
            .get_mut("model.layers.0.post_attention_layernorm.weight")
            .unwrap();
        let len = t["data_offsets"][1].as_u64().unwrap() - t["data_offsets"][0].as_u64().unwrap();
        t["data_offsets"] = json!([start, start.as_u64().unwrap() + len]);
    });
    expect_error(&dir, &ck, &["model.safetensors", "overlapping"]);
}

#[test]
fn missing_tensor() {
    let (dir, ck) = copy_checkpoints("missing-tensor");
    edit_safetensors_header(&weights(&ck), |h| {
        let t = h
            .remove("aud_output_layers.transformer.wpe.weight")
            .unwrap();
        h.insert("aud_output_layers.transformer.wpe.renamed".into(), t);
    });
    expect_error(
        &dir,
        &ck,
        &[
            "model.safetensors",
            "aud_output_layers.transformer.wpe.weight",
            "missing",
        ],
    );
    let (dir, ck) = copy_mimi("missing-codebook");
    edit_safetensors_header(&ck.mimi, |h| {
        let t = h
            .remove("quantizer.rvq_rest.vq.layers.6._codebook.cluster_usage")
            .unwrap();
        h.insert("quantizer.rvq_rest.vq.layers.6._codebook.usage".into(), t);
    });
    expect_error(
        &dir,
        &ck,
        &[
            "mimi.safetensors",
            "layers.6._codebook.cluster_usage",
            "missing",
        ],
    );
}

#[test]
fn wrong_shape() {
    let (dir, ck) = copy_checkpoints("wrong-shape");
    edit_safetensors_header(&weights(&ck), |h| {
        h.get_mut("model.layers.1.mlp.up_proj.weight").unwrap()["shape"] = json!([256, 768]);
    });
    expect_error(
        &dir,
        &ck,
        &[
            "model.safetensors",
            "model.layers.1.mlp.up_proj.weight",
            "[256, 768]",
            "expected [768, 256]",
        ],
    );
    let (dir, ck) = copy_mimi("wrong-shape-mimi");
    edit_safetensors_header(&ck.mimi, |h| {
        h.get_mut("decoder.model.14.conv.conv.weight").unwrap()["shape"] = json!([1, 32, 6]);
    });
    expect_error(
        &dir,
        &ck,
        &[
            "mimi.safetensors",
            "decoder.model.14.conv.conv.weight",
            "expected [1, 64, 3]",
        ],
    );
}

#[test]
fn unsupported_dtype() {
    let (dir, ck) = copy_checkpoints("dtype");
    edit_safetensors_header(&weights(&ck), |h| {
        h.get_mut("model.layers.0.self_attn.q_proj.weight").unwrap()["dtype"] = json!("I16");
    });
    expect_error(
        &dir,
        &ck,
        &[
            "model.safetensors",
            "model.layers.0.self_attn.q_proj.weight",
            "unsupported dtype",
        ],
    );
}

#[test]
fn nan_or_inf_in_a_weight() {
    for (name, bits, what) in [("nan", 0x7fc0u16, "NaN"), ("inf", 0x7f80u16, "inf")] {
        let (dir, ck) = copy_checkpoints(&format!("non-finite-{name}"));
        let (s, _) = tensor_range(&weights(&ck), "model.layers.1.mlp.gate_proj.weight");
        let mut bytes = std::fs::read(weights(&ck)).unwrap();
        bytes[s + 2 * 1000..s + 2 * 1001].copy_from_slice(&bits.to_le_bytes());
        std::fs::write(weights(&ck), bytes).unwrap();
        expect_error(
            &dir,
            &ck,
            &[
                "model.safetensors",
                "model.layers.1.mlp.gate_proj.weight",
                what,
                "element 1000",
            ],
        );
    }
}

#[test]
fn failure_while_writing_leaves_nothing_that_looks_like_a_model() {
    // A NaN in Mimi's last tensor is found while writing the third file, after the other two.
    let (dir, ck) = copy_mimi("late-failure");
    let (_, e) = tensor_range(
        &ck.mimi,
        "quantizer.rvq_rest.vq.layers.6._codebook.embedding_sum",
    );
    let mut bytes = std::fs::read(&ck.mimi).unwrap();
    bytes[e - 4..e].copy_from_slice(&f32::NAN.to_le_bytes());
    std::fs::write(&ck.mimi, bytes).unwrap();
    expect_error(&dir, &ck, &["mimi.safetensors", "embedding_sum", "NaN"]);
    // Into an existing folder: it stays, holding nothing new.
    let out = dir.join("existing");
    std::fs::create_dir_all(&out).unwrap();
    let run = convert(&ck, &out, &["--quant", "q8_0"]);
    assert_one_line_error(&run, &["NaN"]);
    assert_eq!(std::fs::read_dir(&out).unwrap().count(), 0);
}

#[test]
fn config_contradicting_tensor_shapes() {
    let (dir, ck) = copy_checkpoints("config-shapes");
    let path = ck.lm.join("config.json");
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    cfg["intermediate_size"] = json!(1024);
    std::fs::write(&path, cfg.to_string()).unwrap();
    expect_error(
        &dir,
        &ck,
        &[
            "model.safetensors",
            "expected [1024, 256]",
            "config.json",
            "intermediate_size",
        ],
    );

    let (dir, ck) = copy_checkpoints("config-heads");
    let path = ck.lm.join("config.json");
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    cfg["num_key_value_heads"] = json!(3);
    std::fs::write(&path, cfg.to_string()).unwrap();
    expect_error(&dir, &ck, &["config.json", "num_key_value_heads"]);

    let (dir, ck) = copy_checkpoints("config-json");
    std::fs::write(ck.lm.join("config.json"), "{\"hidden_size\": 256,").unwrap();
    expect_error(&dir, &ck, &["config.json", "bad config"]);

    let (dir, ck) = copy_checkpoints("config-missing-key");
    let path = ck.lm.join("config.json");
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    cfg.as_object_mut().unwrap().remove("aud_depthgpt");
    std::fs::write(&path, cfg.to_string()).unwrap();
    expect_error(&dir, &ck, &["config.json", "aud_depthgpt"]);
}

#[test]
fn existing_output_folder_needs_force() {
    let ck = checkpoints(1);
    let out = scratch("not-empty");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(out.join("notes.txt"), "keep").unwrap();
    let run = convert(ck, &out, &["--quant", "q8_0"]);
    assert_one_line_error(&run, &["not-empty", "not empty", "--force"]);
    assert_eq!(std::fs::read_dir(&out).unwrap().count(), 1);
    let run = convert(ck, &out, &["--quant", "q8_0", "--force"]);
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    assert!(out.join("backbone.gguf").exists() && out.join("notes.txt").exists());
}

#[test]
fn bad_flags() {
    let ck = checkpoints(1);
    let out = scratch("bad-flag");
    let run = convert(ck, &out, &["--quant", "q2_k"]);
    assert!(!run.status.success());
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(stderr.contains("unknown quantization `q2_k`"), "{stderr}");
    // The message names every choice.
    for q in ["f32", "f16", "q8_0", "q5_k", "q4_k", "q4_0", "q3_k"] {
        assert!(stderr.contains(q), "{stderr}");
    }
    assert!(!out.exists());
}
