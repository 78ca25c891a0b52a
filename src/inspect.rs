//! `flm-edge inspect`: what a GGUF file holds.

use std::collections::BTreeMap;
use std::fmt::Write;

use flm_conversion::{GgmlType, Gguf};

/// Metadata, one line a key; then the tensors; then totals by type.
pub fn render(g: &Gguf) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "GGUF v{}, {} bytes, data at {}, alignment {}",
        g.version, g.file_len, g.data_offset, g.alignment
    );
    let _ = writeln!(s, "\nmetadata ({} keys):", g.kv.len());
    let width = g.kv.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    for (k, v) in &g.kv {
        let _ = writeln!(s, "  {k:width$}  {}", v.display());
    }
    let _ = writeln!(s, "\ntensors ({}):", g.tensors.len());
    let nw = g
        .tensors
        .iter()
        .map(|t| t.name.len())
        .max()
        .unwrap_or(4)
        .max(4);
    let _ = writeln!(
        s,
        "  {:nw$}  {:6}  {:>24}  {:>14}",
        "name", "type", "shape (ggml order)", "bytes"
    );
    let mut totals: BTreeMap<GgmlType, (usize, u64, u64)> = BTreeMap::new();
    for t in &g.tensors {
        let shape =
            t.ne.iter()
                .map(|d| d.to_string())
                .collect::<Vec<_>>()
                .join(" × ");
        let _ = writeln!(
            s,
            "  {:nw$}  {:6}  {:>24}  {:>14}",
            t.name,
            t.ty.name(),
            shape,
            t.n_bytes()
        );
        let e = totals.entry(t.ty).or_default();
        e.0 += 1;
        e.1 += t.n_elements();
        e.2 += t.n_bytes();
    }
    let _ = writeln!(s, "\ntotals by type:");
    let (mut n, mut el, mut by) = (0, 0, 0);
    for (ty, (count, elems, bytes)) in &totals {
        let _ = writeln!(
            s,
            "  {:6}  {count:5} tensors  {elems:>14} elements  {bytes:>14} bytes",
            ty.name()
        );
        n += count;
        el += elems;
        by += bytes;
    }
    let _ = writeln!(
        s,
        "  {:6}  {n:5} tensors  {el:>14} elements  {by:>14} bytes",
        "all"
    );
    s
}
