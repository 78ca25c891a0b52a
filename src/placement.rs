//! Where llama.cpp put the backbone: which buffers hold its weights and KV cache, how many
//! layers went to the device, and in how many pieces (graph splits) a step runs.
//!
//! llama.cpp has no C API for this; it logs it while loading, and the load's log is read
//! here (`flm_kernels::log::capture`). The formats are those of the pinned llama.cpp
//! (`load_tensors`, `llama_kv_cache`, `sched_reserve`).
//!
//! On a GPU every layer and the output head must live on the device: a weight left in host
//! memory is read by the CPU at every step (the text head alone is some 0.5 GB at q4_k). Only
//! the input embedding table stays on the host, and flm-edge reads its rows itself.

use flm_kernels::log::Message;

#[derive(Clone, Debug, Default, PartialEq)]
pub struct Placement {
    /// Layers offloaded to the device, of how many (the output layer counts as one); None
    /// when llama.cpp placed nothing on a GPU.
    pub offloaded: Option<(u32, u32)>,
    /// Model weight buffers: (buffer name, MiB), e.g. ("CUDA0", 3900.1), ("CPU_Mapped", 530.2).
    pub weights: Vec<(String, f64)>,
    /// KV cache buffers: (buffer name, MiB).
    pub kv: Vec<(String, f64)>,
    /// Graph splits of a one-token step: 1 means the whole step runs on one backend.
    pub splits: Option<u32>,
    /// Input tensors of a one-token step's graph (embedding, positions, mask, cache slots, a
    /// sampler's inputs): on a device, llama.cpp's scheduler copies each from host memory.
    pub inputs: Option<u32>,
    /// llama.cpp's summary of weights it could not put where it wanted: (the first tensor,
    /// how many others, the buffer type it fell back to).
    pub moved: Option<(String, usize, String)>,
}

/// The number after `key` up to the next space or comma.
fn field<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    let rest = &text[text.find(key)? + key.len()..];
    Some(rest.split([',', '\n']).next()?.trim())
}

fn buffer_line(text: &str, what: &str) -> Option<(String, f64)> {
    // "load_tensors:        CUDA0 model buffer size =  3900.12 MiB"
    let (head, size) = text.split_once(what)?;
    let name = head.rsplit(':').next()?.trim();
    let mib = size.trim().strip_suffix("MiB")?.trim().parse().ok()?;
    Some((name.to_string(), mib))
}

impl Placement {
    pub fn from_log(messages: &[Message]) -> Placement {
        let mut p = Placement::default();
        for m in messages {
            // The first line: llama.cpp continues some messages with progress dots.
            let t = m.text.lines().next().unwrap_or("").trim_end();
            if let Some(rest) = t.split_once("offloaded ").map(|(_, r)| r)
                && let Some((n, of)) = rest
                    .split_once(" layers to GPU")
                    .and_then(|(f, _)| f.split_once('/'))
                && let (Ok(n), Ok(of)) = (n.trim().parse(), of.trim().parse())
            {
                p.offloaded = Some((n, of));
            } else if let Some(b) = buffer_line(t, " model buffer size =") {
                p.weights.push(b);
            } else if let Some(b) = buffer_line(t, " KV buffer size =") {
                p.kv.push(b);
            } else if t.contains(": graph") && t.contains("splits = ") {
                // "A / B" when prompt and generation graphs differ: B is a one-token step.
                let last = |key: &str| {
                    field(t, key)
                        .unwrap_or("")
                        .rsplit('/')
                        .next()
                        .and_then(|s| s.trim().parse().ok())
                };
                p.splits = last("splits = ");
                p.inputs = last("input tensors = ");
            } else if t.contains("cannot be used with preferred buffer type") {
                let name = t.split('\'').nth(1).unwrap_or("?").to_string();
                let others = field(t, "(and ")
                    .and_then(|s| s.split_whitespace().next())
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(0);
                let to = t
                    .rsplit("using ")
                    .next()
                    .and_then(|s| s.strip_suffix(" instead"))
                    .unwrap_or("?")
                    .to_string();
                p.moved = Some((name, others, to));
            }
        }
        p
    }

    /// Host synchronisations of one llama_decode on a device, at most: the scheduler waits
    /// for the device and then copies each input tensor with a blocking copy
    /// (`ggml_backend_sched_compute_splits` in the pinned ggml: user inputs are "copied
    /// immediately"), and reading the outputs waits once. None when the load log did not say.
    pub fn decode_synchronisations(&self) -> Option<u32> {
        self.inputs.map(|n| 2 * n + 1)
    }

    /// MiB of weights in buffers of `device` (ggml's device name, "CUDA0"): buffer names
    /// start with their device's name.
    pub fn device_weights_mib(&self, device: &str) -> f64 {
        self.weights
            .iter()
            .filter(|(n, _)| n.starts_with(device))
            .map(|(_, m)| m)
            .sum()
    }

    /// MiB of weights anywhere else: host memory, whatever the buffer type ("CPU_Mapped",
    /// "CPU_REPACK", "AMX", a GPU backend's pinned "CUDA_Host").
    pub fn host_weights_mib(&self, device: &str) -> f64 {
        self.weights
            .iter()
            .filter(|(n, _)| !n.starts_with(device))
            .map(|(_, m)| m)
            .sum()
    }

    /// On a GPU: the weights beyond the input embedding table (`embd_mib`) that stay in host
    /// memory, in MiB, when there are any (a fraction of a MiB is alignment).
    pub fn host_weights_beyond(&self, device: &str, embd_mib: f64) -> Option<f64> {
        let extra = self.host_weights_mib(device) - embd_mib;
        (extra > 1.0).then_some(extra)
    }

    /// One line for the load log: where everything went.
    pub fn summary(&self) -> String {
        let list = |v: &[(String, f64)]| {
            v.iter()
                .map(|(n, m)| format!("{n} {m:.0} MiB"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let mut s = String::new();
        if let Some((n, of)) = self.offloaded.filter(|&(n, _)| n > 0) {
            s += &format!("{n}/{of} layers on the device; ");
        }
        s += &format!("weights: {}", list(&self.weights));
        if !self.kv.is_empty() {
            s += &format!("; KV cache: {}", list(&self.kv));
        }
        if let Some(n) = self.splits {
            s += &format!(
                "; a step runs in {n} graph split{}",
                if n == 1 { "" } else { "s" }
            );
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flm_kernels::log::Level;

    fn msg(text: &str) -> Message {
        Message {
            level: Level::Info,
            text: format!("{text}\n"),
        }
    }

    /// Lines as the pinned llama.cpp prints them (format strings of load_tensors,
    /// llama_kv_cache and sched_reserve), from a CUDA load and a Vulkan load on a software
    /// device whose buffers are too small for the output head.
    #[test]
    fn reads_a_gpu_load() {
        let log = [
            msg("load_tensors: offloading output layer to GPU"),
            msg("load_tensors: offloading 28 repeating layers to GPU"),
            msg("load_tensors: offloaded 29/29 layers to GPU"),
            msg("load_tensors:   CPU_Mapped model buffer size =   532.50 MiB"),
            msg("load_tensors:        CUDA0 model buffer size =  3901.25 MiB"),
            msg("llama_kv_cache:      CUDA0 KV buffer size =   448.00 MiB"),
            msg(
                "sched_reserve: graph (pp bs=32, tg bs=1): nodes = 1030 / 1026, splits = 2 / 1, input objects = 3, input tensors = 3",
            ),
        ];
        let p = Placement::from_log(&log);
        assert_eq!(p.offloaded, Some((29, 29)));
        assert_eq!(
            p.weights,
            vec![("CPU_Mapped".into(), 532.5), ("CUDA0".into(), 3901.25)]
        );
        assert_eq!(p.kv, vec![("CUDA0".into(), 448.0)]);
        assert_eq!(p.splits, Some(1));
        assert_eq!(p.inputs, Some(3));
        assert_eq!(p.decode_synchronisations(), Some(7));
        assert_eq!(p.moved, None);
        assert_eq!(p.host_weights_beyond("CUDA0", 532.4), None);
        assert_eq!(p.device_weights_mib("CUDA0"), 3901.25);
        assert_eq!(
            p.summary(),
            "29/29 layers on the device; weights: CPU_Mapped 532 MiB, CUDA0 3901 MiB; KV cache: CUDA0 448 MiB; a step runs in 1 graph split"
        );
    }

    #[test]
    fn finds_weights_left_in_host_memory() {
        let mut debug = msg(
            "done_getting_tensors: tensor 'output.weight' (q8_0) (and 0 others) cannot be used with preferred buffer type Vulkan0, using CPU instead",
        );
        debug.level = Level::Debug;
        let log = [
            msg("load_tensors: offloaded 3/3 layers to GPU"),
            msg("load_tensors:   CPU_Mapped model buffer size =   161.50 MiB"),
            msg("load_tensors:          CPU model buffer size =   157.94 MiB"),
            msg("load_tensors:      Vulkan0 model buffer size =    20.25 MiB"),
            debug,
            msg(
                "sched_reserve: graph: nodes = 104, splits = 3, input objects = 2, input tensors = 2",
            ),
        ];
        let p = Placement::from_log(&log);
        assert_eq!(p.splits, Some(3));
        assert_eq!(p.moved, Some(("output.weight".into(), 0, "CPU".into())));
        let extra = p.host_weights_beyond("Vulkan0", 161.0).unwrap();
        assert!((extra - 158.44).abs() < 1e-9, "{extra}");
        assert_eq!(p.device_weights_mib("Vulkan0"), 20.25);
    }

    #[test]
    fn a_cpu_load_has_no_offload() {
        let log = [
            msg("load_tensors:   CPU_Mapped model buffer size =  4433.00 MiB"),
            msg("load_tensors:   CPU_REPACK model buffer size =  3900.00 MiB"),
            msg("llama_kv_cache:        CPU KV buffer size =   448.00 MiB"),
            msg(
                "sched_reserve: graph: nodes = 1026, splits = 1, input objects = 2, input tensors = 2",
            ),
        ];
        let p = Placement::from_log(&log);
        assert_eq!(p.offloaded, None);
        assert_eq!(p.splits, Some(1));
        // A GPU build run on the CPU: no layer count.
        let mut gpu_build = log.to_vec();
        gpu_build.push(msg("load_tensors: offloaded 0/3 layers to GPU"));
        assert!(!Placement::from_log(&gpu_build).summary().contains("layers"));
    }

    /// A weight that fell back to one of the CPU's extra buffer types (AMX on this Xeon) is
    /// in host memory too.
    #[test]
    fn any_buffer_not_of_the_device_is_host_memory() {
        let log = [
            msg("load_tensors: offloaded 3/3 layers to GPU"),
            msg("load_tensors:   CPU_Mapped model buffer size =    74.00 MiB"),
            msg("load_tensors:          AMX model buffer size =    44.00 MiB"),
            msg("load_tensors:      Vulkan0 model buffer size =     2.00 MiB"),
        ];
        let p = Placement::from_log(&log);
        assert_eq!(p.host_weights_mib("Vulkan0"), 118.0);
        assert_eq!(p.host_weights_beyond("Vulkan0", 74.0), Some(44.0));
    }
}
