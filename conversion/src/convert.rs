//! `flm-edge convert`: released safetensors to the three GGUF files of a model folder.
//!
//! Everything is validated before anything is written. Files are written under temporary
//! names (`.NAME.partial`) and renamed only when all three are complete, so a failed or
//! interrupted run leaves nothing that looks like a model.

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail, ensure};
use sha2::{Digest, Sha256};

use crate::checkpoint::{Checkpoint, TensorRef, dtype_size};
use crate::ggml_type::GgmlType;
use crate::gguf::{Array, GgufBuilder, Value};
use crate::hf_config::FlmConfig;
use crate::mimi_layout::gather;
use crate::model_files::*;
use crate::plan::{self, Item, Transform, mimi_arch};
use crate::quant::{MimiDtype, Quant, choose};
use crate::tokenizer::Vocab;

pub struct ConvertOptions<'a> {
    /// The released model folder: config.json, tokenizer.json, safetensors.
    pub lm_dir: PathBuf,
    /// The Mimi safetensors file.
    pub mimi: PathBuf,
    pub out_dir: PathBuf,
    pub quant: Quant,
    pub mimi_dtype: MimiDtype,
    /// Replace the model files of a folder that is not empty.
    pub force: bool,
    /// Progress and notes, one line each.
    pub log: &'a mut dyn FnMut(&str),
}

pub struct FileSummary {
    pub path: PathBuf,
    pub tensors: usize,
    pub bytes: u64,
}

pub struct Summary {
    pub model_id: String,
    pub files: Vec<FileSummary>,
}

/// Elements converted per chunk: bounds the converter's buffers to ~32 MB whatever the tensor.
const CHUNK_ELEMENTS: usize = 1 << 22;

struct Job<'c> {
    file: &'static str,
    ck: &'c Checkpoint,
    items: Vec<Item>,
    types: Vec<GgmlType>,
    gguf: GgufBuilder,
}

pub fn convert(opts: ConvertOptions) -> Result<Summary> {
    let ConvertOptions {
        lm_dir,
        mimi,
        out_dir,
        quant,
        mimi_dtype,
        force,
        log,
    } = opts;
    ensure!(
        lm_dir.is_dir(),
        "{}: not a folder (expected the released model folder)",
        lm_dir.display()
    );
    let config_path = lm_dir.join("config.json");
    let cfg = FlmConfig::load(&config_path)?;
    let vocab = Vocab::load(&lm_dir.join("tokenizer.json"), cfg.vocab_size)?;
    let lm = Checkpoint::open_dir(&lm_dir)?;
    let mimi_ck = Checkpoint::open_file(&mimi)?;

    let has_lm_head = lm.get("lm_head.weight").is_some();
    let backbone_items = plan::backbone(&cfg, has_lm_head);
    let ffn_width = plan::depth_ffn_width(&cfg, !matches!(quant, Quant::F32 | Quant::F16));
    let audio_items = plan::audio(&cfg, ffn_width);
    let mimi_items = plan::mimi(mimi_dtype);
    check_sources(&lm, &backbone_items, Some(&config_path))?;
    check_sources(&lm, &audio_items, Some(&config_path))?;
    check_sources(&mimi_ck, &mimi_items, None)?;
    report_unused(
        &lm,
        &[&backbone_items, &audio_items],
        plan::ignored_lm_tensor,
        log,
    );
    report_unused(&mimi_ck, &[&mimi_items], plan::ignored_mimi_tensor, log);

    let model_id = model_id(&config_path, &lm, &mimi_ck)?;
    log(&format!("model id {model_id}"));

    let mut jobs = vec![
        Job {
            file: BACKBONE_FILE,
            ck: &lm,
            items: backbone_items,
            types: vec![],
            gguf: backbone_kv(&cfg, &vocab, quant),
        },
        Job {
            file: AUDIO_FILE,
            ck: &lm,
            items: audio_items,
            types: vec![],
            gguf: audio_kv(&cfg, &vocab, quant, ffn_width),
        },
        Job {
            file: MIMI_FILE,
            ck: &mimi_ck,
            items: mimi_items,
            types: vec![],
            gguf: mimi_kv(mimi_dtype),
        },
    ];
    for job in &mut jobs {
        job.gguf.set(KEY_MODEL_ID, Value::Str(model_id.clone()));
        for item in &job.items {
            let (ty, note) = choose(quant, mimi_dtype, item.role, item.row_len());
            if let Some(note) = note {
                log(&format!("note: {}: {}: {note}", job.file, item.name));
            }
            job.gguf.add_tensor(&item.name, &item.ne(), ty)?;
            job.types.push(ty);
        }
    }

    let created = prepare_out_dir(&out_dir, force)?;
    let result = write_all(&out_dir, &jobs, log);
    match result {
        Ok(files) => Ok(Summary { model_id, files }),
        Err(e) => {
            for f in ALL_FILES {
                let _ = fs::remove_file(partial_path(&out_dir, f));
            }
            if created {
                let _ = fs::remove_dir(&out_dir);
            }
            Err(e)
        }
    }
}

fn write_all(out_dir: &Path, jobs: &[Job], log: &mut dyn FnMut(&str)) -> Result<Vec<FileSummary>> {
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let mut buffers = Buffers {
        f32s: vec![],
        usage: vec![],
        out: vec![],
        threads,
    };
    for job in jobs {
        let t0 = Instant::now();
        let partial = partial_path(out_dir, job.file);
        let file = File::create(&partial)
            .with_context(|| format!("{}: cannot create", partial.display()))?;
        job.gguf
            .write(&file, |i, w| {
                write_item(job.ck, &job.items[i], job.types[i], w, &mut buffers)
            })
            .with_context(|| format!("writing {}", out_dir.join(job.file).display()))?;
        file.sync_all()
            .with_context(|| format!("{}: sync", partial.display()))?;
        log(&format!(
            "wrote {} ({} tensors) in {:.1} s",
            job.file,
            job.items.len(),
            t0.elapsed().as_secs_f64()
        ));
    }
    let mut files = vec![];
    for job in jobs {
        let dest = out_dir.join(job.file);
        fs::rename(partial_path(out_dir, job.file), &dest)
            .with_context(|| format!("{}: cannot rename", dest.display()))?;
        let bytes = fs::metadata(&dest)?.len();
        files.push(FileSummary {
            path: dest,
            tensors: job.items.len(),
            bytes,
        });
    }
    Ok(files)
}

fn partial_path(dir: &Path, file: &str) -> PathBuf {
    dir.join(format!(".{file}.partial"))
}

/// Creates the output folder, or checks that an existing one may be written. Returns whether
/// it was created (and so may be removed again on failure).
fn prepare_out_dir(dir: &Path, force: bool) -> Result<bool> {
    if !dir.exists() {
        fs::create_dir_all(dir).with_context(|| format!("{}: cannot create", dir.display()))?;
        return Ok(true);
    }
    ensure!(
        dir.is_dir(),
        "{}: exists and is not a folder",
        dir.display()
    );
    let mut entries = vec![];
    for e in fs::read_dir(dir).with_context(|| format!("{}: cannot list", dir.display()))? {
        let name = e?.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') && name.ends_with(".partial") {
            // Left by an interrupted run.
            let _ = fs::remove_file(dir.join(&name));
        } else {
            entries.push(name);
        }
    }
    if !entries.is_empty() && !force {
        bail!(
            "{}: output folder is not empty (holds {}); use --force to replace its model files",
            dir.display(),
            entries[0]
        );
    }
    Ok(false)
}

/// Every source tensor exists with a supported dtype and the shape config.json implies.
fn check_sources(ck: &Checkpoint, items: &[Item], config: Option<&Path>) -> Result<()> {
    for item in items {
        let usage = match &item.transform {
            Transform::Codebook { usage } => usage.as_slice(),
            _ => &[],
        };
        for (k, src) in item.sources.iter().enumerate() {
            let t = ck
                .get(src)
                .with_context(|| format!("{}: tensor `{src}` is missing", ck.label))?;
            ensure!(
                dtype_size(t.dtype).is_some(),
                "{}: tensor `{src}` has unsupported dtype {:?} (need BF16, F16 or F32)",
                ck.file_of(t).display(),
                t.dtype
            );
            if t.shape != item.shape {
                let from = match config {
                    Some(c) if !item.dims_from.is_empty() => {
                        format!(" ({} says {})", c.display(), item.dims_from.join(", "))
                    }
                    _ => String::new(),
                };
                bail!(
                    "{}: tensor `{src}` has shape {:?}, expected {:?}{from}",
                    ck.file_of(t).display(),
                    t.shape,
                    item.shape
                );
            }
            if let Some(u) = usage.get(k) {
                let ut = ck
                    .get(u)
                    .with_context(|| format!("{}: tensor `{u}` is missing", ck.label))?;
                ensure!(
                    ut.shape == [item.shape[0]] && dtype_size(ut.dtype).is_some(),
                    "{}: tensor `{u}` has shape {:?} and dtype {:?}, expected [{}] float",
                    ck.file_of(ut).display(),
                    ut.shape,
                    ut.dtype,
                    item.shape[0]
                );
            }
        }
    }
    Ok(())
}

fn report_unused(
    ck: &Checkpoint,
    plans: &[&[Item]],
    ignored: fn(&str) -> bool,
    log: &mut dyn FnMut(&str),
) {
    let used = |name: &str| {
        plans.iter().flat_map(|p| p.iter()).any(|i| {
            i.sources.iter().any(|s| s == name)
                || matches!(&i.transform, Transform::Codebook { usage } if usage.iter().any(|u| u == name))
        })
    };
    let unused: Vec<&str> = ck
        .tensors()
        .map(|t| t.name.as_str())
        .filter(|n| !used(n) && !ignored(n))
        .collect();
    if let Some(first) = unused.first() {
        log(&format!(
            "note: {}: ignoring {} tensor(s) the model does not use, e.g. `{first}`",
            ck.label,
            unused.len()
        ));
    }
}

/// A digest of config.json, the checkpoint headers, and the first and last 4 KiB of every
/// tensor: the same release gives the same id, two different checkpoints different ones.
fn model_id(config: &Path, lm: &Checkpoint, mimi: &Checkpoint) -> Result<String> {
    let mut h = Sha256::new();
    h.update(fs::read(config).with_context(|| format!("{}: cannot read", config.display()))?);
    for ck in [lm, mimi] {
        for header in ck.headers() {
            h.update(header);
        }
        for t in ck.tensors() {
            let b = ck.bytes(t);
            h.update(&b[..b.len().min(4096)]);
            h.update(&b[b.len().saturating_sub(4096)..]);
        }
    }
    let digest = h.finalize();
    Ok(digest[..16].iter().map(|b| format!("{b:02x}")).collect())
}

struct Buffers {
    f32s: Vec<f32>,
    usage: Vec<f32>,
    out: Vec<u8>,
    threads: usize,
}

/// Streams one output tensor: sources in stack order, a chunk of whole rows at a time.
fn write_item(
    ck: &Checkpoint,
    item: &Item,
    ty: GgmlType,
    w: &mut dyn Write,
    buf: &mut Buffers,
) -> Result<()> {
    let row = item.row_len() as usize;
    let rows_per_chunk = (CHUNK_ELEMENTS / row).max(1);
    if item.transform == Transform::Zeros {
        let n: usize = item.shape.iter().product();
        buf.f32s.clear();
        buf.f32s.resize(n, 0.0);
        ty.quantize_rows(&buf.f32s, row, &mut buf.out)?;
        w.write_all(&buf.out)?;
        return Ok(());
    }
    if let Transform::ConvTaps(c) | Transform::ConvHalves(c) = item.transform {
        // A whole conv weight at once (at most 8.4 M values), gathered into the runtime's
        // layout.
        let t = ck.get(&item.sources[0]).expect("checked before writing");
        buf.f32s.resize(t.n_elements(), 0.0);
        ck.read_f32(t, 0, &mut buf.f32s)?;
        let relaid = match item.transform {
            Transform::ConvTaps(_) => gather(&buf.f32s, c.taps_order()),
            _ => gather(&buf.f32s, c.halves_order()),
        };
        ty.quantize_rows_parallel(&relaid, row, &mut buf.out, buf.threads)?;
        w.write_all(&buf.out)?;
        return Ok(());
    }
    for (k, src) in item.sources.iter().enumerate() {
        let t: &TensorRef = ck.get(src).expect("checked before writing");
        if let Transform::Codebook { usage } = &item.transform {
            let u = ck.get(&usage[k]).expect("checked before writing");
            buf.usage.resize(u.n_elements(), 0.0);
            ck.read_f32(u, 0, &mut buf.usage)?;
        }
        // Source rows may be shorter than output rows (PadCols).
        let src_row = item.shape.last().copied().unwrap_or(1);
        let n_rows = t.n_elements() / src_row;
        let mut r = 0;
        while r < n_rows {
            let n = rows_per_chunk.min(n_rows - r);
            buf.f32s.resize(n * src_row, 0.0);
            ck.read_f32(t, r * src_row, &mut buf.f32s)?;
            if src_row < row {
                buf.f32s.resize(n * row, 0.0);
                for i in (0..n).rev() {
                    buf.f32s
                        .copy_within(i * src_row..(i + 1) * src_row, i * row);
                    buf.f32s[i * row + src_row..(i + 1) * row].fill(0.0);
                }
            }
            match &item.transform {
                Transform::Scale(s) => buf.f32s.iter_mut().for_each(|x| *x *= s),
                Transform::Codebook { .. } => {
                    for (i, chunk) in buf.f32s.chunks_exact_mut(row).enumerate() {
                        let usage = buf.usage[r + i].max(1e-5);
                        chunk.iter_mut().for_each(|x| *x /= usage);
                    }
                }
                Transform::None
                | Transform::Zeros
                | Transform::PadRows(_)
                | Transform::PadCols(_)
                | Transform::ConvTaps(_)
                | Transform::ConvHalves(_) => {}
            }
            ty.quantize_rows_parallel(&buf.f32s, row, &mut buf.out, buf.threads)?;
            w.write_all(&buf.out)?;
            r += n;
        }
        if let Transform::PadRows(total) = item.transform {
            buf.f32s.clear();
            buf.f32s.resize((total - n_rows) * row, 0.0);
            ty.quantize_rows(&buf.f32s, row, &mut buf.out)?;
            w.write_all(&buf.out)?;
        }
    }
    Ok(())
}

fn general_kv(b: &mut GgufBuilder, arch: &str, name: &str) {
    b.set("general.architecture", Value::Str(arch.into()));
    b.set("general.name", Value::Str(name.into()));
    b.set("general.quantization_version", Value::U32(2));
}

fn backbone_kv(cfg: &FlmConfig, vocab: &Vocab, quant: Quant) -> GgufBuilder {
    let mut b = GgufBuilder::new();
    general_kv(&mut b, "qwen2", "FLM-Audio backbone");
    b.set("general.file_type", Value::U32(quant.llama_ftype()));
    let a = |k: &str| format!("qwen2.{k}");
    b.set(&a("block_count"), Value::U32(cfg.num_hidden_layers as u32));
    b.set(
        &a("context_length"),
        Value::U32(cfg.max_position_embeddings as u32),
    );
    b.set(&a("embedding_length"), Value::U32(cfg.hidden_size as u32));
    b.set(
        &a("feed_forward_length"),
        Value::U32(cfg.intermediate_size as u32),
    );
    b.set(
        &a("attention.head_count"),
        Value::U32(cfg.num_attention_heads as u32),
    );
    b.set(
        &a("attention.head_count_kv"),
        Value::U32(cfg.n_kv_heads() as u32),
    );
    b.set(&a("rope.freq_base"), Value::F32(cfg.rope_theta as f32));
    b.set(
        &a("attention.layer_norm_rms_epsilon"),
        Value::F32(cfg.rms_norm_eps as f32),
    );
    b.set(&a("vocab_size"), Value::U32(cfg.vocab_size as u32));
    // Per-position hidden states, not pooled: flm-edge reads the state of each step.
    b.set(&a("pooling_type"), Value::U32(0));
    vocab.write_llama_keys(&mut b, cfg.bos_token_id, cfg.eos_ids().first().copied());
    b
}

fn audio_kv(cfg: &FlmConfig, vocab: &Vocab, quant: Quant, ffn_width: usize) -> GgufBuilder {
    use audio_keys::*;
    let mut b = GgufBuilder::new();
    general_kv(
        &mut b,
        AUDIO_ARCH,
        "FLM-Audio audio embeddings and depth transformer",
    );
    let u = |v: usize| Value::U32(v as u32);
    b.set(QUANT, Value::Str(quant.name().into()));
    b.set(EMBEDDING_LENGTH, u(cfg.hidden_size));
    b.set(TEXT_VOCAB, u(cfg.vocab_size));
    b.set(CONTEXT_LENGTH, u(cfg.max_position_embeddings));
    b.set(N_CODEBOOKS, u(cfg.aud_channel));
    b.set(AUDIO_VOCAB, u(cfg.aud_vocab_size));
    b.set(TEXT_WAIT, Value::U32(cfg.mm_token_info.text_wait_token_id));
    b.set(AUDIO_PAD, Value::U32(cfg.mm_token_info.aud_pad_token_id));
    b.set(AUDIO_EMPTY, Value::U32(cfg.mm_token_info.aud_emp_token_id));
    if let Some(bos) = cfg.bos_token_id {
        b.set(BOS, Value::U32(bos));
    }
    if let Some(&eos) = cfg.eos_ids().first() {
        b.set(EOS, Value::U32(eos));
    }
    // Text and the semantic codebooks have no delay; acoustic codebooks lag one step.
    let c = cfg.aud_channel;
    let mut delays = vec![0i32];
    for _ in 0..2 {
        delays.push(0);
        delays.extend(std::iter::repeat_n(1, c - 1));
    }
    b.set(DELAYS, Value::Array(Array::I32(delays)));
    b.set(DEP_EMBEDDING_LENGTH, u(cfg.aud_depthgpt.n_embd));
    b.set(DEP_HEAD_COUNT, u(cfg.aud_depthgpt.n_head));
    b.set(DEP_BLOCK_COUNT, u(cfg.aud_depthgpt.n_layer));
    b.set(DEP_FEED_FORWARD, u(ffn_width));
    b.set(DEP_NORM_EPS, Value::F32(DEPFORMER_NORM_EPS));
    for (stream, d) in [("text", &TEXT_SAMPLING), ("audio", &AUDIO_SAMPLING)] {
        let k = |f: &str| format!("{SAMPLING}.{stream}.{f}");
        b.set(&k("temperature"), Value::F32(d.temperature));
        b.set(&k("top_p"), Value::F32(d.top_p));
        b.set(&k("top_k"), Value::U32(d.top_k));
        b.set(&k("repetition_penalty"), Value::F32(d.repetition_penalty));
        b.set(&k("repetition_window"), Value::U32(d.repetition_window));
    }
    b.set(
        AUDIO_PENALTY_CODEBOOKS,
        Value::U32(crate::model_files::AUDIO_PENALTY_CODEBOOKS),
    );
    b.set(TOKENIZER_JSON, Value::Str(vocab.json_text.clone()));
    b
}

fn mimi_kv(dtype: MimiDtype) -> GgufBuilder {
    use mimi_arch as m;
    use mimi_keys as k;
    let mut b = GgufBuilder::new();
    general_kv(&mut b, MIMI_ARCH, "Mimi");
    let u = |v: usize| Value::U32(v as u32);
    b.set(k::SAMPLE_RATE, Value::U32(m::SAMPLE_RATE));
    b.set(k::FRAME_SIZE, Value::U32(m::FRAME_SIZE));
    b.set(k::N_CODEBOOKS, u(m::N_CODEBOOKS));
    b.set(k::CODEBOOK_SIZE, u(m::CODEBOOK_SIZE));
    b.set(k::CODEBOOK_DIM, u(m::CODEBOOK_DIM));
    b.set(k::LATENT_DIM, u(m::LATENT));
    b.set(k::N_FILTERS, u(m::N_FILTERS));
    b.set(
        k::RATIOS,
        Value::Array(Array::U32(m::RATIOS.iter().map(|&r| r as u32).collect())),
    );
    b.set(k::BLOCK_COUNT, u(m::LAYERS));
    b.set(k::HEAD_COUNT, u(m::HEADS));
    b.set(k::FEED_FORWARD, u(m::FFN));
    b.set(k::CONTEXT, u(m::CONTEXT));
    b.set(k::ROPE_MAX_PERIOD, Value::F32(m::ROPE_MAX_PERIOD));
    b.set(k::NORM_EPS, Value::F32(m::NORM_EPS));
    b.set(k::WEIGHT_DTYPE, Value::Str(dtype.name().into()));
    b
}
