//! The backbone's input of one step: the plain sum of 17 embedding rows (text, 8 speaking and
//! 8 listening codebooks), read from the memory-mapped model files and dequantized row by
//! row into preallocated buffers.

use std::fs::File;
use std::path::Path;

use anyhow::{Context, Result, ensure};
use flm_conversion::plan::audio_names::{LISTEN_EMBD, SPEAK_EMBD};
use flm_conversion::{GgmlType, Gguf};
use memmap2::Mmap;

/// One embedding table of a mapped file: `rows` rows of `width` values.
struct Table {
    offset: usize,
    row_bytes: usize,
    rows: usize,
    ty: GgmlType,
}

struct Mapped {
    map: Mmap,
}

impl Mapped {
    fn open(path: &Path) -> Result<Mapped> {
        let file = File::open(path).with_context(|| format!("{}: cannot open", path.display()))?;
        // SAFETY: read-only map of a model file whose header was validated against its length
        // (Gguf::open); the file must not be truncated while in use, as for any mmap loader.
        let map = unsafe { Mmap::map(&file) }
            .with_context(|| format!("{}: cannot map", path.display()))?;
        Ok(Mapped { map })
    }
}

/// A table of `g`, viewed as rows of `width` (stacked tables are consecutive rows).
fn table(g: &Gguf, path: &Path, name: &str, width: usize) -> Result<Table> {
    let label = path.display();
    let t = g
        .tensor(name)
        .with_context(|| format!("{label}: tensor `{name}` is missing"))?;
    ensure!(
        t.ne[0] as usize == width,
        "{label}: tensor `{name}` has rows of {}, expected {width}",
        t.ne[0]
    );
    Ok(Table {
        offset: (g.data_offset + t.offset) as usize,
        row_bytes: t.ty.row_bytes(width as u64) as usize,
        rows: (t.n_elements() / width as u64) as usize,
        ty: t.ty,
    })
}

pub struct Embedder {
    backbone: Mapped,
    audio: Mapped,
    text: Table,
    speak: Table,
    listen: Table,
    width: usize,
    audio_vocab: usize,
    codebooks: usize,
    row: Vec<f32>,
    row2: Vec<f32>,
}

impl Embedder {
    /// Maps the text table of the backbone file and the audio tables of the audio file.
    pub fn open(
        backbone: (&Path, &Gguf),
        audio: (&Path, &Gguf),
        width: usize,
        audio_vocab: usize,
        codebooks: usize,
    ) -> Result<Embedder> {
        let text = table(backbone.1, backbone.0, "token_embd.weight", width)?;
        let speak = table(audio.1, audio.0, SPEAK_EMBD, width)?;
        let listen = table(audio.1, audio.0, LISTEN_EMBD, width)?;
        for (t, name) in [(&speak, SPEAK_EMBD), (&listen, LISTEN_EMBD)] {
            ensure!(
                t.rows == audio_vocab * codebooks,
                "{}: `{name}` holds {} rows, expected {codebooks} × {audio_vocab}",
                audio.0.display(),
                t.rows
            );
        }
        let (backbone_map, audio_map) = (Mapped::open(backbone.0)?, Mapped::open(audio.0)?);
        // Every row a step may read, in memory from the start and kept there.
        for (m, t) in [
            (&backbone_map, &text),
            (&audio_map, &speak),
            (&audio_map, &listen),
        ] {
            let end = (t.offset + t.rows * t.row_bytes).min(m.map.len());
            crate::resident::keep_resident(&m.map[t.offset.min(end)..end], "embedding tables");
        }
        Ok(Embedder {
            backbone: backbone_map,
            audio: audio_map,
            text,
            speak,
            listen,
            width,
            audio_vocab,
            codebooks,
            row: vec![0.0; width],
            row2: vec![0.0; width],
        })
    }

    /// Writes the sum of the embeddings of `text`, `speak[c]` and `listen[c]` into `out`.
    pub fn sum(&mut self, text: i32, speak: &[i32], listen: &[i32], out: &mut [f32]) -> Result<()> {
        ensure!(out.len() == self.width, "embedding: output width");
        ensure!(
            speak.len() == self.codebooks && listen.len() == self.codebooks,
            "embedding: {} speaking and {} listening ids, expected {} each",
            speak.len(),
            listen.len(),
            self.codebooks
        );
        ensure!(
            text >= 0 && (text as usize) < self.text.rows,
            "embedding: text id {text} is outside the vocabulary of {}",
            self.text.rows
        );
        let v = self.audio_vocab;
        let at = |t: &Table, r: usize| t.offset + r * t.row_bytes;
        let text_at = at(&self.text, text as usize);
        let rb = self.text.row_bytes;
        self.text
            .ty
            .dequantize(&self.backbone.map[text_at..text_at + rb], out)?;
        // In the official order: text, then speak c + listen c for each codebook.
        for c in 0..self.codebooks {
            let (s, l) = (speak[c], listen[c]);
            for id in [s, l] {
                ensure!(
                    id >= 0 && (id as usize) < v,
                    "embedding: audio id {id} of codebook {c} is outside 0..{v}"
                );
            }
            let (sa, la) = (
                at(&self.speak, c * v + s as usize),
                at(&self.listen, c * v + l as usize),
            );
            let (sb, lb) = (self.speak.row_bytes, self.listen.row_bytes);
            self.speak
                .ty
                .dequantize(&self.audio.map[sa..sa + sb], &mut self.row)?;
            self.listen
                .ty
                .dequantize(&self.audio.map[la..la + lb], &mut self.row2)?;
            for ((o, a), b) in out.iter_mut().zip(&self.row).zip(&self.row2) {
                *o += *a + *b;
            }
        }
        Ok(())
    }
}
