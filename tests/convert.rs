//! `flm-edge convert` on checkpoints in the released formats, and what it writes.

mod common;

use std::path::Path;

use common::*;
use flm_conversion::model_files::{AUDIO_FILE, BACKBONE_FILE, MIMI_FILE};
use flm_conversion::{GgmlType, Gguf, gguf::read_tensor_bytes};
use flm_edge::llama::{BackboneParams, LlamaBackbone};
use flm_edge::model_dir::ModelDir;

/// Source values of a bf16/f32 safetensors tensor, as f32.
fn source_f32(path: &Path, name: &str) -> Vec<f32> {
    let bytes = std::fs::read(path).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    let (s, e) = tensor_range(path, name);
    match header[name]["dtype"].as_str().unwrap() {
        "BF16" => bytes[s..e]
            .chunks_exact(2)
            .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect(),
        "F32" => bytes[s..e]
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
            .collect(),
        d => panic!("dtype {d}"),
    }
}

/// Values of a GGUF tensor, dequantized.
fn gguf_f32(path: &Path, name: &str) -> Vec<f32> {
    let g = Gguf::open(path).unwrap();
    let t = g.tensor(name).unwrap_or_else(|| panic!("no tensor {name}"));
    let bytes = read_tensor_bytes(path, &g, t).unwrap();
    let mut out = vec![0f32; t.n_elements() as usize];
    t.ty.dequantize(&bytes, &mut out).unwrap();
    out
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// llama.cpp loads the backbone file and returns finite logits and hidden state for one step.
fn llama_cpp_step(model: &Path) -> (Vec<f32>, Vec<f32>) {
    let mut bb = LlamaBackbone::load(
        &model.join(BACKBONE_FILE),
        // One thread: tests run side by side on a 2-core machine.
        &BackboneParams {
            n_ctx: 64,
            n_threads: 1,
            ..Default::default()
        },
    )
    .unwrap();
    let embd: Vec<f32> = (0..bb.n_embd())
        .map(|i| ((i as f32) * 0.37).sin() * 0.05)
        .collect();
    bb.step(&embd, 0).unwrap();
    bb.step(&embd, 1).unwrap();
    (bb.logits().unwrap().to_vec(), bb.hidden().unwrap().to_vec())
}

#[test]
fn tiny_model_converts_at_every_quant_and_llama_cpp_runs_the_backbone() {
    let ck = checkpoints(1);
    for quant in ["f32", "f16", "q8_0", "q5_k", "q4_k", "q4_0", "q3_k"] {
        let out = scratch(&format!("every-quant-{quant}"));
        let run = convert(ck, &out, &["--quant", quant]);
        assert!(
            run.status.success(),
            "{quant}: {}",
            String::from_utf8_lossy(&run.stderr)
        );
        let m = ModelDir::open(&out).unwrap();
        assert_eq!(m.audio.get_str("flm.quant").unwrap(), quant);
        let (logits, hidden) = llama_cpp_step(&out);
        assert_eq!(logits.len(), 152064);
        assert_eq!(hidden.len(), 256);
        assert!(
            logits.iter().all(|x| x.is_finite()) && hidden.iter().all(|x| x.is_finite()),
            "{quant}: non-finite output"
        );
        assert!(
            logits.iter().any(|&x| x != logits[0]),
            "{quant}: constant logits"
        );
        // Expected storage types (llama.cpp's per-tensor policy; looked-up tables one step
        // finer, see README).
        let ty = |g: &Gguf, n: &str| g.tensor(n).unwrap().ty;
        let expect = match quant {
            "f32" => [GgmlType::F32, GgmlType::F32, GgmlType::F32],
            "f16" => [GgmlType::F16, GgmlType::F16, GgmlType::F16],
            "q8_0" => [GgmlType::Q8_0, GgmlType::F16, GgmlType::Q8_0],
            "q5_k" => [GgmlType::Q5_K, GgmlType::Q8_0, GgmlType::Q6_K],
            "q4_k" => [GgmlType::Q4_K, GgmlType::Q8_0, GgmlType::Q6_K],
            "q4_0" => [GgmlType::Q4_0, GgmlType::Q8_0, GgmlType::Q6_K],
            "q3_k" => [GgmlType::Q3_K, GgmlType::Q8_0, GgmlType::Q6_K],
            q => panic!("no expectation for {q}"),
        };
        assert_eq!(ty(&m.backbone, "blk.0.attn_q.weight"), expect[0], "{quant}");
        assert_eq!(ty(&m.backbone, "token_embd.weight"), expect[1], "{quant}");
        assert_eq!(ty(&m.backbone, "output.weight"), expect[2], "{quant}");
        // The K-quant mixes of llama.cpp for 2 layers: attn_v and ffn_down of layer 1 (the
        // last eighth) get Q6_K under Q4_K_M / Q5_K_M; Q3_K_M gives the first two attn_v
        // Q5_K and, as n/16 = 0, every ffn_down and attn_output Q4_K. The depth
        // transformer's attention rows (128) fit no 256-value block and fall back as
        // llama.cpp does; its MLP rows are padded to 512.
        let k_mix = match quant {
            "q5_k" => Some([
                GgmlType::Q5_K,
                GgmlType::Q6_K,
                GgmlType::Q5_K,
                GgmlType::Q6_K,
                GgmlType::Q5_K,
                GgmlType::Q5_1,
                GgmlType::Q5_K,
            ]),
            "q4_k" => Some([
                GgmlType::Q4_K,
                GgmlType::Q6_K,
                GgmlType::Q4_K,
                GgmlType::Q6_K,
                GgmlType::Q4_K,
                GgmlType::Q5_0,
                GgmlType::Q4_K,
            ]),
            "q3_k" => Some([
                GgmlType::Q5_K,
                GgmlType::Q5_K,
                GgmlType::Q4_K,
                GgmlType::Q4_K,
                GgmlType::Q4_K,
                GgmlType::Q4_0,
                GgmlType::Q3_K,
            ]),
            _ => None,
        };
        if let Some(want) = k_mix {
            let got = [
                ty(&m.backbone, "blk.0.attn_v.weight"),
                ty(&m.backbone, "blk.1.attn_v.weight"),
                ty(&m.backbone, "blk.0.ffn_down.weight"),
                ty(&m.backbone, "blk.1.ffn_down.weight"),
                ty(&m.backbone, "blk.1.attn_output.weight"),
                ty(&m.audio, "dep.blk.0.attn_qkv.weight"),
                ty(&m.audio, "dep.blk.0.ffn_down"),
            ];
            assert_eq!(got, want, "{quant}");
        }
        assert_eq!(ty(&m.backbone, "blk.0.attn_norm.weight"), GgmlType::F32);
        assert_eq!(ty(&m.mimi, "enc_tr.0.attn_qkv.weight"), GgmlType::F32);
        assert_eq!(ty(&m.mimi, "rvq.codebook"), GgmlType::F32);
    }
}

#[test]
fn f32_conversion_keeps_every_value_and_stacks_tables_in_codebook_order() {
    let ck = checkpoints(1);
    let out = scratch("values-f32");
    let run = convert(ck, &out, &["--quant", "f32"]);
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let lm = ck.lm.join("model.safetensors");
    let pairs = [
        (
            BACKBONE_FILE,
            "blk.1.attn_k.bias",
            vec!["model.layers.1.self_attn.k_proj.bias".to_string()],
        ),
        (
            BACKBONE_FILE,
            "blk.0.ffn_down.weight",
            vec!["model.layers.0.mlp.down_proj.weight".to_string()],
        ),
        (
            BACKBONE_FILE,
            "output.weight",
            vec!["lm_head.weight".to_string()],
        ),
        (
            AUDIO_FILE,
            "audio.listen_embd",
            (0..8)
                .map(|c| format!("model.embed_tokens.aud_listen_embeddings.{c}.weight"))
                .collect(),
        ),
        (
            AUDIO_FILE,
            "dep.blk.1.ffn_down",
            (0..8)
                .map(|c| format!("aud_output_layers.transformer.h.1.mlps.{c}.down_proj.weight"))
                .collect(),
        ),
        (
            AUDIO_FILE,
            "dep.output",
            (0..8)
                .map(|c| format!("aud_output_layers.lm_heads.{c}.weight"))
                .collect(),
        ),
    ];
    for (file, name, sources) in pairs {
        let got = gguf_f32(&out.join(file), name);
        let want: Vec<f32> = sources.iter().flat_map(|s| source_f32(&lm, s)).collect();
        assert_eq!(got, want, "{file}: {name}");
    }
    let mimi = out.join(MIMI_FILE);
    assert_eq!(
        gguf_f32(&mimi, "dec.5.weight"),
        source_f32(&ck.mimi, "decoder.model.5.convtr.convtr.weight")
    );
    // Codebook q: embedding_sum / max(cluster_usage, 1e-5), row by row.
    let book = gguf_f32(&mimi, "rvq.codebook");
    for (q, layer) in [(0, "rvq_first.vq.layers.0"), (3, "rvq_rest.vq.layers.2")] {
        let sum = source_f32(
            &ck.mimi,
            &format!("quantizer.{layer}._codebook.embedding_sum"),
        );
        let usage = source_f32(
            &ck.mimi,
            &format!("quantizer.{layer}._codebook.cluster_usage"),
        );
        for r in [0usize, 777, 2047] {
            for d in [0usize, 100, 255] {
                let want = sum[r * 256 + d] / usage[r].max(1e-5);
                assert_eq!(
                    book[q * 2048 * 256 + r * 256 + d],
                    want,
                    "codebook {q} row {r}"
                );
            }
        }
    }
}

#[test]
fn quantized_weights_stay_within_their_type_error() {
    let ck = checkpoints(1);
    let lm = ck.lm.join("model.safetensors");
    let src = source_f32(&lm, "model.layers.0.mlp.up_proj.weight");
    let scale = src.iter().fold(0f32, |m, x| m.max(x.abs()));
    // Bounds relative to the tensor's absmax: f16 rounds to 2^-11; q8_0 (scale absmax/127)
    // errs by half a step; q4_0 (scale absmax/8, codes -8..7) by up to a whole step where the
    // value opposite the absmax sign clamps at 7; both plus the f16 rounding of the block scale
    // (2^-11 of the absmax). q4_k's worst element is of the same order: its sub-block scales
    // and mins are themselves rounded to 6 bits; q5_k has twice as many steps, so half that.
    // q3_k (codes -4..3, a 6-bit scale per 16 values) errs like q4_0 by up to a whole step
    // (absmax/4) where a value clamps at 3, plus the rounding of its sub-block scales (half of
    // 1/32 of the largest scale, times a code of up to 4: about 1/64 of the absmax), allowed
    // 1/32 as ggml's scale search does not always pick absmax/4. Measured here: q5_k 0.056,
    // q4_k 0.113, q3_k 0.262 of the absmax.
    let f16_scale = 2f32.powi(-11);
    for (quant, tol) in [
        ("f16", 1e-3),
        ("q8_0", 0.5 / 127.0 + f16_scale),
        ("q4_0", 1.0 / 8.0 + f16_scale),
        ("q5_k", 1.0 / 16.0 + f16_scale),
        ("q4_k", 1.0 / 8.0 + f16_scale),
        ("q3_k", 1.0 / 4.0 + 1.0 / 32.0 + f16_scale),
    ] {
        let out = scratch(&format!("qerr-{quant}"));
        assert!(convert(ck, &out, &["--quant", quant]).status.success());
        let got = gguf_f32(&out.join(BACKBONE_FILE), "blk.0.ffn_up.weight");
        let err = max_abs_diff(&got, &src) / scale;
        eprintln!("{quant}: largest error {err:.4} of the absmax");
        assert!(err < tol, "{quant}: relative error {err}");
    }
}

#[test]
fn sharded_checkpoint_converts_like_a_single_file() {
    let single = checkpoints(1);
    let dir = scratch("sharded");
    let lm = dir.join("lm");
    flm_testkit::write_lm(
        &lm,
        &flm_testkit::LmSpec {
            shards: 3,
            ..flm_testkit::LmSpec::tiny()
        },
        1,
    )
    .unwrap();
    assert!(
        lm.join("model.safetensors.index.json").exists()
            && lm.join("model-00003-of-00003.safetensors").exists()
    );
    let sharded = Checkpoints {
        lm,
        mimi: single.mimi.clone(),
    };
    let (a, b) = (dir.join("a"), dir.join("b"));
    assert!(convert(single, &a, &["--quant", "q8_0"]).status.success());
    let run = convert(&sharded, &b, &["--quant", "q8_0"]);
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    for file in [BACKBONE_FILE, AUDIO_FILE] {
        let (ga, gb) = (
            Gguf::open(&a.join(file)).unwrap(),
            Gguf::open(&b.join(file)).unwrap(),
        );
        assert_eq!(ga.tensors.len(), gb.tensors.len());
        for t in &ga.tensors {
            let u = gb.tensor(&t.name).unwrap();
            assert_eq!(
                read_tensor_bytes(&a.join(file), &ga, t).unwrap(),
                read_tensor_bytes(&b.join(file), &gb, u).unwrap(),
                "{}",
                t.name
            );
        }
    }
}

#[test]
fn f16_mimi_and_model_ids() {
    let ck = checkpoints(1);
    let out = scratch("mimi-f16");
    assert!(
        convert(ck, &out, &["--quant", "q8_0", "--mimi-dtype", "f16"])
            .status
            .success()
    );
    let m = ModelDir::open(&out).unwrap();
    assert_eq!(m.mimi.tensor("dec.2.weight").unwrap().ty, GgmlType::F16);
    assert_eq!(m.mimi.tensor("dec.2.bias").unwrap().ty, GgmlType::F32);
    assert_eq!(m.mimi.tensor("rvq.codebook").unwrap().ty, GgmlType::F32);
    // Same checkpoint, same id whatever the quantization; another checkpoint, another id.
    let again = scratch("mimi-f16-again");
    assert!(convert(ck, &again, &["--quant", "q4_0"]).status.success());
    assert_eq!(ModelDir::open(&again).unwrap().model_id, m.model_id);
    let other = scratch("other-seed");
    assert!(
        convert(checkpoints(2), &other, &["--quant", "q8_0"])
            .status
            .success()
    );
    assert_ne!(ModelDir::open(&other).unwrap().model_id, m.model_id);
}

#[test]
fn a_mismatched_set_of_files_is_refused() {
    let a = scratch("mismatch-a");
    let b = scratch("mismatch-b");
    assert!(
        convert(checkpoints(1), &a, &["--quant", "q8_0"])
            .status
            .success()
    );
    assert!(
        convert(checkpoints(2), &b, &["--quant", "q8_0"])
            .status
            .success()
    );
    std::fs::copy(b.join(MIMI_FILE), a.join(MIMI_FILE)).unwrap();
    let err = ModelDir::open(&a).err().expect("mismatch accepted");
    let msg = format!("{err:#}");
    assert!(
        msg.contains("mimi.gguf") && msg.contains("does not match"),
        "{msg}"
    );
    let run = flm_edge(&["inspect", a.to_str().unwrap()]);
    assert_one_line_error(&run, &["mimi.gguf", "different conversions"]);
}
