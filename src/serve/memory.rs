//! What a number of conversations needs in memory, from the model's own dimensions and the
//! configured context: the weights once (Mimi's too: one codec of N streams), per
//! conversation the backbone's KV cache and a Mimi stream's state, and the Mimi graphs' work
//! buffers for N streams. `serve` refuses at start a `server.max_conversations` that does not
//! fit `memory_mib`.

use std::path::Path;

use anyhow::{Context, Result, ensure};
use flm_conversion::model_files::{AUDIO_FILE, BACKBONE_FILE, MIMI_FILE, audio_keys};
use flm_kernels::mimi::{MAX_STREAMS, Mimi};

use crate::config::Config;
use crate::model_dir::ModelDir;

const MIB: u64 = 1 << 20;

/// The memory of a model folder under a configuration, in bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Need {
    /// Backbone, audio and Mimi weights (the files' sizes), held once.
    pub weights: u64,
    /// One conversation's backbone KV cache at the configured context.
    pub kv: u64,
}

impl Need {
    pub fn of(model: &ModelDir, cfg: &Config) -> Result<Need> {
        let g = &model.backbone;
        let label = model.path(BACKBONE_FILE).display().to_string();
        let int = |k: &str| -> Result<u64> {
            g.get_u64(&format!("qwen2.{k}"))
                .with_context(|| label.clone())
        };
        let (layers, heads) = (int("block_count")?, int("attention.head_count")?);
        let kv_heads = g.get_u64("qwen2.attention.head_count_kv").unwrap_or(heads);
        ensure!(heads > 0, "{label}: qwen2.attention.head_count is 0");
        let head_dim = int("embedding_length")? / heads;
        let trained = model
            .audio
            .get_u64(audio_keys::CONTEXT_LENGTH)
            .with_context(|| model.path(AUDIO_FILE).display().to_string())?;
        let positions = match cfg.context.positions {
            0 => trained,
            p => p as u64,
        };
        // The engine's rule: an f32 cache for f32 weights, else f16.
        let elem = if g.get_u64("general.file_type").ok() == Some(0) {
            4
        } else {
            2
        };
        let size = |f: &str| -> Result<u64> {
            let p = model.path(f);
            Ok(std::fs::metadata(&p)
                .with_context(|| p.display().to_string())?
                .len())
        };
        Ok(Need {
            weights: size(BACKBONE_FILE)? + size(AUDIO_FILE)? + size(MIMI_FILE)?,
            kv: layers * kv_heads * head_dim * 2 * elem * positions,
        })
    }

    /// Mimi's bytes besides its weights for `n` conversations: the streams' states and the
    /// graphs' work buffers.
    pub fn mimi(n: u64) -> u64 {
        let n = n.clamp(1, MAX_STREAMS as u64) as usize;
        (Mimi::states_bytes(n) + Mimi::work_bytes(n)) as u64
    }

    /// Bytes for `n` conversations.
    pub fn total(&self, n: u64) -> u64 {
        self.weights + n * self.kv + Need::mimi(n)
    }

    /// The most conversations that fit in `budget` bytes (counting Mimi at most 16 streams'
    /// worth beyond 16, the engine's limit).
    pub fn fits(&self, budget: u64) -> u64 {
        let left = budget.saturating_sub(self.weights);
        let mut n = 0;
        while n < 4096 && (n + 1) * self.kv + Need::mimi(n + 1) <= left {
            n += 1;
        }
        n
    }
}

/// The bytes the model may take: `memory_mib`, or (0) the machine's memory less 1 GiB.
pub fn budget(cfg: &Config) -> Result<u64> {
    if cfg.memory_mib > 0 {
        return Ok(cfg.memory_mib * MIB);
    }
    let info = std::fs::read_to_string("/proc/meminfo").context("/proc/meminfo")?;
    let kib: u64 = info
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("/proc/meminfo: no MemTotal")?;
    Ok((kib * 1024).saturating_sub(1024 * MIB))
}

/// Refuses a `server.max_conversations` whose weights, KV caches and Mimis do not fit the
/// board's memory: one line naming the keys, the profile and the numbers.
pub fn check(model: &Path, cfg: &Config, board: Option<&str>) -> Result<()> {
    let dir = ModelDir::open(model)?;
    let need = Need::of(&dir, cfg)?;
    let budget = budget(cfg)?;
    let n = cfg.server.max_conversations as u64;
    let total = need.total(n);
    if total <= budget {
        return Ok(());
    }
    let mib = |b: u64| b.div_ceil(MIB);
    let whose = match (board, cfg.memory_mib) {
        (_, 0) => "the machine's memory less 1 GiB".to_string(),
        (Some(b), _) => format!("`memory_mib` of board {b}"),
        (None, _) => "`memory_mib`".to_string(),
    };
    anyhow::bail!(
        "key `server.max_conversations`: {n} conversations need {} MiB ({} MiB of weights + {n} × {} MiB KV cache at {} steps + {} MiB of Mimi streams), over the {} MiB of {whose}; {} fit",
        mib(total),
        mib(need.weights),
        mib(need.kv),
        match cfg.context.positions {
            0 => dir
                .audio
                .get_u64(audio_keys::CONTEXT_LENGTH)
                .unwrap_or_default(),
            p => p as u64,
        },
        mib(Need::mimi(n)),
        mib(budget),
        need.fits(budget)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_release_kv_cache_is_448_mib_per_conversation() {
        // 28 layers × 4 KV heads × 128 dims × (K, V) × f16 × 8192 steps.
        let kv = 28 * 4 * 128 * 2 * 2 * 8192;
        assert_eq!(kv / MIB, 448);
        let need = Need {
            weights: 5000 * MIB,
            kv,
        };
        // Two streams' Mimi: three states of 16.1 MiB (the pads' slice too), work buffers for
        // batches of 1 and 2 (3 × 7 MiB).
        let state = Mimi::state_bytes() as u64;
        assert_eq!(state.div_ceil(MIB), 17);
        assert_eq!(Need::mimi(2), 3 * state + 3 * 7 * MIB);
        let two = need.total(2);
        assert_eq!(two, 5000 * MIB + 2 * kv + 3 * state + 21 * MIB);
        assert_eq!(need.fits(two), 2);
        assert_eq!(need.fits(two - 1), 1);
        assert_eq!(need.fits(4000 * MIB), 0);
    }
}
