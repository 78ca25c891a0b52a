//! On an NVIDIA Jetson, what sets a step's pace besides the model: the power mode (`nvpmodel`)
//! and whether the GPU's and the memory's clocks are locked or scale with load. A step that
//! starts while the clocks are low runs at their speed until the governor raises them, and
//! the memory clock sets the bandwidth every step needs (README: "Jetson clocks").
//!
//! Read from files only (no root, no `nvpmodel` binary): the device-tree model, nvpmodel's
//! state (`/var/lib/nvpmodel/status`, `pmode:0002`) and its modes (`/etc/nvpmodel.conf`,
//! `< POWER_MODEL ID=2 NAME=MAXN_SUPER >`), the GPU's devfreq node in sysfs (`min_freq` equal
//! to `max_freq` once `jetson_clocks` ran), and the memory controller's clock in debugfs
//! (`/sys/kernel/debug/bpmp/debug/clk/emc`, readable by root only). Every path is taken under
//! a root folder, so that tests run on a fake one.

use std::path::{Path, PathBuf};

/// What was found, as log lines: one that describes, then one per warning.
#[derive(Debug, Default)]
pub struct Report {
    pub summary: String,
    pub warnings: Vec<String>,
}

fn read(root: &Path, path: &str) -> Option<String> {
    let s = std::fs::read_to_string(root.join(path.trim_start_matches('/'))).ok()?;
    Some(
        s.trim_matches(|c: char| c == '\0' || c.is_whitespace())
            .to_string(),
    )
}

fn number(root: &Path, dir: &Path, name: &str) -> Option<u64> {
    read(root, dir.join(name).to_str()?)?.parse().ok()
}

fn mhz(hz: u64) -> String {
    format!("{} MHz", hz / 1_000_000)
}

fn mhz_range(min: u64, max: u64) -> String {
    format!("{}-{} MHz", min / 1_000_000, max / 1_000_000)
}

/// The board's power modes: (id, name) in the order of nvpmodel.conf, and the default id.
fn power_modes(conf: &str) -> (Vec<(u32, String)>, Option<u32>) {
    let mut modes = vec![];
    let mut default = None;
    for line in conf.lines().map(str::trim) {
        if line.starts_with('#') {
            continue;
        }
        let field = |key: &str| {
            line.split_whitespace()
                .find_map(|w| w.strip_prefix(key))
                .map(|v| v.trim_end_matches('>').to_string())
        };
        if line.starts_with("< POWER_MODEL") {
            if let (Some(id), Some(name)) =
                (field("ID=").and_then(|v| v.parse().ok()), field("NAME="))
            {
                modes.push((id, name));
            }
        } else if line.starts_with("< PM_CONFIG") {
            default = field("DEFAULT=").and_then(|v| v.parse().ok());
        }
    }
    (modes, default)
}

/// The GPU's devfreq folder: the node whose name is the GPU's (`17000000.gpu` on JetPack 6,
/// `17000000.ga10b` on JetPack 5, `gv11b` on Xavier).
fn gpu_devfreq(root: &Path) -> Option<PathBuf> {
    let dir = Path::new("sys/class/devfreq");
    let mut names: Vec<String> = std::fs::read_dir(root.join(dir))
        .ok()?
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| {
            ["gpu", "ga10b", "gv11b", "gp10b", "gb10b"]
                .iter()
                .any(|g| n.contains(g))
        })
        .collect();
    names.sort();
    Some(dir.join(names.first()?))
}

/// The board's state, or `None` when this is not a Jetson.
pub fn inspect(root: &Path) -> Option<Report> {
    let model = read(root, "proc/device-tree/model")?;
    if !model.contains("Jetson") {
        return None;
    }
    let mut parts = vec![model.clone()];
    let mut warnings = vec![];

    // The power mode.
    let (modes, default) = read(root, "etc/nvpmodel.conf")
        .map(|c| power_modes(&c))
        .unwrap_or_default();
    let current = read(root, "var/lib/nvpmodel/status")
        .and_then(|s| {
            s.split_whitespace()
                .find_map(|w| w.strip_prefix("pmode:"))
                .and_then(|v| v.parse::<u32>().ok())
        })
        .or(default);
    let name_of = |id: u32| {
        modes
            .iter()
            .find(|(i, _)| *i == id)
            .map(|(_, n)| n.as_str())
            .unwrap_or("?")
    };
    // The fastest mode: MAXN SUPER where the board has it (JetPack 6.2 on Orin Nano and NX),
    // else MAXN. The ids differ between boards (MAXN is 0 on AGX Orin, MAXN_SUPER 2 on Orin Nano).
    let fastest = ["MAXN_SUPER", "MAXN"]
        .iter()
        .find_map(|want| modes.iter().find(|(_, n)| n == want))
        .map(|(i, n)| (*i, n.clone()));
    match current {
        Some(id) => {
            parts.push(format!("power mode {id} ({})", name_of(id)));
            if let Some((fid, fname)) = &fastest
                && *fid != id
            {
                warnings.push(format!(
                    "power mode {id} ({}) is not the board's fastest, {fname}: its clocks are capped lower; `sudo nvpmodel -m {fid}` (README: Jetson clocks)",
                    name_of(id)
                ));
            }
        }
        None => parts.push("power mode unknown (no /var/lib/nvpmodel/status)".into()),
    }

    // The GPU's clock.
    match gpu_devfreq(root) {
        Some(dir) => {
            let (min, max, cur) = (
                number(root, &dir, "min_freq"),
                number(root, &dir, "max_freq"),
                number(root, &dir, "cur_freq"),
            );
            let governor = read(root, dir.join("governor").to_str().unwrap_or_default());
            match (min, max) {
                (Some(min), Some(max)) if min == max => {
                    parts.push(format!("GPU clock locked at {}", mhz(max)))
                }
                (Some(min), Some(max)) => {
                    parts.push(format!(
                        "GPU clock scales {} (now {}, governor {})",
                        mhz_range(min, max),
                        cur.map(mhz).unwrap_or_else(|| "?".into()),
                        governor.as_deref().unwrap_or("?")
                    ));
                    warnings.push(format!(
                        "the GPU clock scales ({}): a step that starts while it is low runs slower until the governor raises it; lock it with `sudo jetson_clocks` (README: Jetson clocks)",
                        mhz_range(min, max)
                    ));
                }
                _ => parts.push(format!("GPU clock unreadable ({})", dir.display())),
            }
        }
        None => parts.push("GPU clock: no devfreq node".into()),
    }

    // The memory clock (EMC), through the BPMP's debugfs: root only.
    let emc = Path::new("sys/kernel/debug/bpmp/debug/clk/emc");
    match (
        number(root, emc, "rate"),
        number(root, emc, "max_rate"),
        number(root, emc, "mrq_rate_locked"),
    ) {
        (Some(rate), Some(max), Some(locked)) => {
            if locked == 1 && rate == max {
                parts.push(format!("memory clock locked at {}", mhz(rate)));
            } else {
                parts.push(format!(
                    "memory clock {} of {}, {}",
                    mhz(rate),
                    mhz(max),
                    if locked == 1 { "locked" } else { "scaling" }
                ));
                warnings.push(format!(
                    "the memory clock is at {} of {} and {}: every step reads the whole model, at the memory's pace; lock it with `sudo jetson_clocks` (README: Jetson clocks)",
                    mhz(rate),
                    mhz(max),
                    if locked == 1 { "locked below its top" } else { "scales with load" }
                ));
            }
        }
        _ => parts.push(
            "memory clock unreadable (debugfs is root's; `sudo jetson_clocks --show` tells)".into(),
        ),
    }
    Some(Report {
        summary: parts.join("; "),
        warnings,
    })
}

/// Logs the board's state at start: one line, and one warning line per clock that scales.
pub fn log(root: &Path) {
    if let Some(r) = inspect(root) {
        eprintln!("flm-edge: jetson: {}", r.summary);
        for w in &r.warnings {
            eprintln!("warning: jetson: {w}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fake Orin Nano: model, nvpmodel's files, the GPU's devfreq node, the EMC's debugfs.
    fn board(mode: u32, gpu: (u64, u64), emc: Option<(u64, u64, u8)>) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let w = |path: &str, text: &str| {
            let p = dir.path().join(path);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, text).unwrap();
        };
        w(
            "proc/device-tree/model",
            "NVIDIA Jetson Orin Nano Engineering Reference Developer Kit Super\0",
        );
        w(
            "etc/nvpmodel.conf",
            "# comment: < POWER_MODEL ID=9 NAME=NOT_A_MODE >\n\
             < POWER_MODEL ID=0 NAME=15W >\nCPU_ONLINE CORE_0 1\n\
             < POWER_MODEL ID=1 NAME=25W >\n< POWER_MODEL ID=2 NAME=MAXN_SUPER >\n\
             < POWER_MODEL ID=3 NAME=7W >\n< PM_CONFIG DEFAULT=2 >\n",
        );
        w(
            "var/lib/nvpmodel/status",
            &format!("pmode:{mode:04} fmode:quiet\n"),
        );
        let gpu_dir = "sys/class/devfreq/17000000.gpu";
        w(&format!("{gpu_dir}/min_freq"), &format!("{}\n", gpu.0));
        w(&format!("{gpu_dir}/max_freq"), &format!("{}\n", gpu.1));
        w(&format!("{gpu_dir}/cur_freq"), &format!("{}\n", gpu.0));
        w(&format!("{gpu_dir}/governor"), "nvhost_podgov\n");
        w("sys/class/devfreq/3d00000.nvdla/max_freq", "1\n");
        if let Some((rate, max, locked)) = emc {
            let e = "sys/kernel/debug/bpmp/debug/clk/emc";
            w(&format!("{e}/rate"), &format!("{rate}\n"));
            w(&format!("{e}/max_rate"), &format!("{max}\n"));
            w(&format!("{e}/mrq_rate_locked"), &format!("{locked}\n"));
        }
        dir
    }

    #[test]
    fn a_locked_board_in_its_fastest_mode_has_no_warning() {
        let b = board(
            2,
            (1_020_000_000, 1_020_000_000),
            Some((3_199_000_000, 3_199_000_000, 1)),
        );
        let r = inspect(b.path()).unwrap();
        assert_eq!(
            r.summary,
            "NVIDIA Jetson Orin Nano Engineering Reference Developer Kit Super; power mode 2 \
             (MAXN_SUPER); GPU clock locked at 1020 MHz; memory clock locked at 3199 MHz"
        );
        assert!(r.warnings.is_empty(), "{:?}", r.warnings);
    }

    #[test]
    fn a_slower_mode_and_scaling_clocks_are_warned_about() {
        let b = board(
            0,
            (306_000_000, 1_020_000_000),
            Some((665_600_000, 3_199_000_000, 0)),
        );
        let r = inspect(b.path()).unwrap();
        assert!(r.summary.contains("power mode 0 (15W)"), "{}", r.summary);
        assert!(
            r.summary
                .contains("GPU clock scales 306-1020 MHz (now 306 MHz, governor nvhost_podgov)"),
            "{}",
            r.summary
        );
        assert!(
            r.summary
                .contains("memory clock 665 MHz of 3199 MHz, scaling"),
            "{}",
            r.summary
        );
        assert_eq!(r.warnings.len(), 3, "{:?}", r.warnings);
        assert!(
            r.warnings[0].contains("`sudo nvpmodel -m 2`"),
            "{}",
            r.warnings[0]
        );
        assert!(
            r.warnings[1].contains("`sudo jetson_clocks`"),
            "{}",
            r.warnings[1]
        );
        assert!(
            r.warnings[2].contains("scales with load"),
            "{}",
            r.warnings[2]
        );
    }

    #[test]
    fn without_root_the_memory_clock_is_said_to_be_unreadable() {
        let b = board(2, (1_020_000_000, 1_020_000_000), None);
        let r = inspect(b.path()).unwrap();
        assert!(
            r.summary.ends_with(
                "memory clock unreadable (debugfs is root's; `sudo jetson_clocks --show` tells)"
            ),
            "{}",
            r.summary
        );
        assert!(r.warnings.is_empty());
        // No nvpmodel state: the configured default is the mode.
        std::fs::remove_file(b.path().join("var/lib/nvpmodel/status")).unwrap();
        assert!(
            inspect(b.path())
                .unwrap()
                .summary
                .contains("power mode 2 (MAXN_SUPER)")
        );
    }

    #[test]
    fn other_machines_are_not_jetsons() {
        let dir = tempfile::tempdir().unwrap();
        assert!(inspect(dir.path()).is_none(), "no device tree");
        std::fs::create_dir_all(dir.path().join("proc/device-tree")).unwrap();
        std::fs::write(
            dir.path().join("proc/device-tree/model"),
            "Raspberry Pi 5 Model B\0",
        )
        .unwrap();
        assert!(inspect(dir.path()).is_none());
    }
}
