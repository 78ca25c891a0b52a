//! Which device the graphs run on: the user's choice (`backend = "cuda"`, `--backend
//! vulkan`, `cuda1`, …) resolved against ggml's device registry.
//!
//! The registry lists every device of every backend compiled in. A backend's name picks its
//! best device the way ggml's own `ggml_backend_init_best` does: a discrete GPU first, then
//! an integrated one (every Jetson's GPU registers as IGPU); `gpu` takes any backend's; a
//! numbered name (`cuda0`, `vulkan1`) picks that device. The choice is made once, before a
//! model loads, and a device that is not there is one line naming what was asked for and
//! why it is missing (the build lacks the backend, or its driver found no device).

use std::sync::OnceLock;

use anyhow::{Result, bail};
use llama_cpp_sys_2 as sys;

use crate::log;

/// The GPU backends flm-edge can be built with, by the registry names ggml gives them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GpuBackend {
    Cuda,
    Vulkan,
}

impl GpuBackend {
    pub const ALL: [GpuBackend; 2] = [GpuBackend::Cuda, GpuBackend::Vulkan];

    /// The name users write (and the cargo feature that builds it).
    pub fn name(self) -> &'static str {
        match self {
            GpuBackend::Cuda => "cuda",
            GpuBackend::Vulkan => "vulkan",
        }
    }

    /// ggml's registry name of the backend.
    pub fn registry_name(self) -> &'static str {
        match self {
            GpuBackend::Cuda => "CUDA",
            GpuBackend::Vulkan => "Vulkan",
        }
    }

    fn hardware(self) -> &'static str {
        match self {
            GpuBackend::Cuda => "an NVIDIA GPU",
            GpuBackend::Vulkan => "a Vulkan driver",
        }
    }
}

/// What the user asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Device {
    #[default]
    Cpu,
    /// The best GPU of any backend compiled in.
    Gpu,
    /// The best device of one backend.
    Backend(GpuBackend),
    /// One device by its registry name: `cuda0`, `vulkan1`.
    Numbered(GpuBackend, u8),
}

impl std::str::FromStr for Device {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> Result<Device> {
        let lower = s.to_ascii_lowercase();
        match lower.as_str() {
            "cpu" => return Ok(Device::Cpu),
            "gpu" => return Ok(Device::Gpu),
            _ => {}
        }
        for b in GpuBackend::ALL {
            if let Some(rest) = lower.strip_prefix(b.name()) {
                if rest.is_empty() {
                    return Ok(Device::Backend(b));
                }
                if let Ok(i) = rest.parse::<u8>()
                    && rest.bytes().all(|c| c.is_ascii_digit())
                {
                    return Ok(Device::Numbered(b, i));
                }
            }
        }
        bail!("backend `{s}`: not cpu, cuda, vulkan, gpu or a numbered device such as cuda0")
    }
}

impl std::fmt::Display for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Device::Cpu => f.write_str("cpu"),
            Device::Gpu => f.write_str("gpu"),
            Device::Backend(b) => f.write_str(b.name()),
            Device::Numbered(b, i) => write!(f, "{}{i}", b.name()),
        }
    }
}

/// The kind of a registered device (ggml's `ggml_backend_dev_type`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Cpu,
    Gpu,
    /// A GPU sharing the host's memory (Jetson, laptop and SoC GPUs).
    IntegratedGpu,
    Accelerator,
}

/// One device of the registry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceInfo {
    /// ggml's device name: "CPU", "CUDA0", "Vulkan0".
    pub name: String,
    /// The registry (backend) it belongs to: "CPU", "CUDA", "Vulkan".
    pub backend: String,
    pub kind: Kind,
    pub description: String,
    pub memory_total: usize,
}

/// Picks the device for `want` among `devices` (the registry's, in order). `compiled` are
/// the registry names of the backends in this build; `why` is what the backends logged
/// while they looked for devices (a driver's complaint). Returns an index into `devices`.
pub fn choose(
    want: Device,
    devices: &[DeviceInfo],
    compiled: &[String],
    why: Option<&str>,
) -> Result<usize> {
    let has_backend = |b: GpuBackend| compiled.iter().any(|c| c == b.registry_name());
    let of_backend =
        |b: Option<GpuBackend>, d: &DeviceInfo| b.is_none_or(|b| d.backend == b.registry_name());
    let best = |b: Option<GpuBackend>| {
        [Kind::Gpu, Kind::IntegratedGpu].iter().find_map(|k| {
            devices
                .iter()
                .position(|d| d.kind == *k && of_backend(b, d))
        })
    };
    let because = why.map(|w| format!(" ({w})")).unwrap_or_default();
    let listed = || {
        devices
            .iter()
            .map(|d| d.name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let missing_backend = |b: GpuBackend| {
        anyhow::anyhow!(
            "backend {}: this build has no {} backend (build with --features {}, on a machine with {})",
            want,
            b.registry_name(),
            b.name(),
            b.hardware()
        )
    };
    match want {
        Device::Cpu => match devices.iter().position(|d| d.kind == Kind::Cpu) {
            Some(i) => Ok(i),
            None => bail!("backend cpu: ggml registered no CPU device"),
        },
        Device::Gpu => match best(None) {
            Some(i) => Ok(i),
            None if GpuBackend::ALL.iter().any(|b| has_backend(*b)) => {
                bail!("backend gpu: no GPU found{because}")
            }
            None => bail!(
                "backend gpu: this build has the CPU backend only (build with --features cuda or --features vulkan)"
            ),
        },
        Device::Backend(b) => {
            if !has_backend(b) {
                return Err(missing_backend(b));
            }
            match best(Some(b)) {
                Some(i) => Ok(i),
                None => bail!(
                    "backend {want}: no {} device found{because}",
                    b.registry_name()
                ),
            }
        }
        Device::Numbered(b, n) => {
            if !has_backend(b) {
                return Err(missing_backend(b));
            }
            let name = format!("{}{n}", b.registry_name());
            match devices
                .iter()
                .position(|d| d.name.eq_ignore_ascii_case(&name))
            {
                Some(i) => Ok(i),
                None => bail!(
                    "backend {want}: no device {name} (devices here: {}){because}",
                    listed()
                ),
            }
        }
    }
}

/// The registry, read once: its devices, its backends, and what they logged on the way.
struct Registry {
    devices: Vec<(DeviceInfo, Handle)>,
    compiled: Vec<String>,
    why: Option<String>,
}

#[derive(Clone, Copy)]
struct Handle(sys::ggml_backend_dev_t);
// SAFETY: registry devices are process-wide static objects of ggml.
unsafe impl Send for Handle {}
unsafe impl Sync for Handle {}

fn c_str(p: *const std::ffi::c_char) -> String {
    if p.is_null() {
        return String::new();
    }
    // SAFETY: ggml returns NUL-terminated strings it owns for the process's life.
    unsafe { std::ffi::CStr::from_ptr(p) }
        .to_string_lossy()
        .into_owned()
}

fn registry() -> &'static Registry {
    static REGISTRY: OnceLock<Registry> = OnceLock::new();
    REGISTRY.get_or_init(|| {
        // The first touch registers every backend compiled in; a GPU backend whose driver
        // fails says why only in its log, which is kept for the error line.
        let (devices, messages) = log::capture(|| {
            // SAFETY: registry getters; indices below the counts they return.
            unsafe {
                (0..sys::ggml_backend_dev_count())
                    .map(|i| {
                        let dev = sys::ggml_backend_dev_get(i);
                        let kind = match sys::ggml_backend_dev_type(dev) {
                            sys::GGML_BACKEND_DEVICE_TYPE_CPU => Kind::Cpu,
                            sys::GGML_BACKEND_DEVICE_TYPE_GPU => Kind::Gpu,
                            sys::GGML_BACKEND_DEVICE_TYPE_IGPU => Kind::IntegratedGpu,
                            _ => Kind::Accelerator,
                        };
                        let (mut free, mut total) = (0usize, 0usize);
                        sys::ggml_backend_dev_memory(dev, &mut free, &mut total);
                        let info = DeviceInfo {
                            name: c_str(sys::ggml_backend_dev_name(dev)),
                            backend: c_str(sys::ggml_backend_reg_name(
                                sys::ggml_backend_dev_backend_reg(dev),
                            )),
                            kind,
                            description: c_str(sys::ggml_backend_dev_description(dev)),
                            memory_total: total,
                        };
                        (info, Handle(dev))
                    })
                    .collect::<Vec<_>>()
            }
        });
        // SAFETY: registry getters, as above.
        let compiled = unsafe {
            (0..sys::ggml_backend_reg_count())
                .map(|i| c_str(sys::ggml_backend_reg_name(sys::ggml_backend_reg_get(i))))
                .collect()
        };
        Registry {
            devices,
            compiled,
            why: log::last_error(&messages),
        }
    })
}

/// Every device ggml registered in this build on this machine.
pub fn list() -> Vec<DeviceInfo> {
    registry().devices.iter().map(|(d, _)| d.clone()).collect()
}

/// A device of the registry, chosen.
#[derive(Clone, Copy)]
pub struct Resolved {
    index: usize,
}

impl Resolved {
    pub fn info(&self) -> &'static DeviceInfo {
        &registry().devices[self.index].0
    }

    pub fn is_cpu(&self) -> bool {
        self.info().kind == Kind::Cpu
    }

    /// The registry's device (for ggml and llama.cpp calls).
    pub fn raw(&self) -> sys::ggml_backend_dev_t {
        registry().devices[self.index].1.0
    }
}

impl Device {
    /// The registry device this choice names here, or one line saying why there is none.
    pub fn resolve(self) -> Result<Resolved> {
        let r = registry();
        let infos: Vec<DeviceInfo> = r.devices.iter().map(|(d, _)| d.clone()).collect();
        let index = choose(self, &infos, &r.compiled, r.why.as_deref())?;
        Ok(Resolved { index })
    }

    /// Fails, in one line, when this build or machine has no such device.
    pub fn check(self) -> Result<()> {
        self.resolve().map(|_| ())
    }

    pub fn is_cpu(self) -> bool {
        self == Device::Cpu
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dev(name: &str, backend: &str, kind: Kind) -> DeviceInfo {
        DeviceInfo {
            name: name.into(),
            backend: backend.into(),
            kind,
            description: String::new(),
            memory_total: 0,
        }
    }

    fn names(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn parses_backend_names_and_numbered_devices() {
        assert_eq!("cpu".parse::<Device>().unwrap(), Device::Cpu);
        assert_eq!(
            "CUDA".parse::<Device>().unwrap(),
            Device::Backend(GpuBackend::Cuda)
        );
        assert_eq!(
            "vulkan".parse::<Device>().unwrap(),
            Device::Backend(GpuBackend::Vulkan)
        );
        assert_eq!("gpu".parse::<Device>().unwrap(), Device::Gpu);
        assert_eq!(
            "cuda1".parse::<Device>().unwrap(),
            Device::Numbered(GpuBackend::Cuda, 1)
        );
        assert_eq!(
            "Vulkan0".parse::<Device>().unwrap(),
            Device::Numbered(GpuBackend::Vulkan, 0)
        );
        for bad in ["", "tpu", "cuda-1", "cuda+1", "cuda999", "cudax", "cpu0"] {
            let e = bad.parse::<Device>().unwrap_err().to_string();
            assert!(e.contains("not cpu, cuda, vulkan, gpu"), "{bad}: {e}");
        }
        for d in ["cpu", "gpu", "cuda", "vulkan", "cuda3", "vulkan0"] {
            assert_eq!(d.parse::<Device>().unwrap().to_string(), d);
        }
    }

    #[test]
    fn a_jetson_integrated_gpu_is_found_by_backend_name() {
        // ggml-cuda registers a GPU with cudaDeviceProp.integrated as IGPU: every Jetson.
        let jetson = [
            dev("CPU", "CPU", Kind::Cpu),
            dev("CUDA0", "CUDA", Kind::IntegratedGpu),
        ];
        let compiled = names(&["CUDA", "CPU"]);
        let want = |s: &str| choose(s.parse().unwrap(), &jetson, &compiled, None).unwrap();
        assert_eq!(want("cuda"), 1);
        assert_eq!(want("gpu"), 1);
        assert_eq!(want("cuda0"), 1);
        assert_eq!(want("cpu"), 0);
    }

    #[test]
    fn a_discrete_gpu_comes_before_an_integrated_one() {
        let laptop = [
            dev("CPU", "CPU", Kind::Cpu),
            dev("Vulkan0", "Vulkan", Kind::IntegratedGpu),
            dev("Vulkan1", "Vulkan", Kind::Gpu),
            dev("CUDA0", "CUDA", Kind::Gpu),
        ];
        let compiled = names(&["CUDA", "Vulkan", "CPU"]);
        let want = |s: &str| choose(s.parse().unwrap(), &laptop, &compiled, None).unwrap();
        assert_eq!(want("vulkan"), 2);
        assert_eq!(want("vulkan0"), 1);
        assert_eq!(want("cuda"), 3);
        assert_eq!(want("gpu"), 2);
    }

    #[test]
    fn a_missing_device_is_one_line_naming_the_request_and_the_reason() {
        let cpu_only = [dev("CPU", "CPU", Kind::Cpu)];
        let err = |s: &str, compiled: &[&str], why: Option<&str>| {
            let e = choose(s.parse().unwrap(), &cpu_only, &names(compiled), why)
                .unwrap_err()
                .to_string();
            assert!(!e.contains('\n'), "{e}");
            e
        };
        // The build lacks the backend.
        let e = err("cuda", &["CPU"], None);
        assert!(
            e.starts_with("backend cuda: this build has no CUDA backend"),
            "{e}"
        );
        assert!(e.contains("--features cuda"), "{e}");
        let e = err("vulkan1", &["CPU"], None);
        assert!(
            e.starts_with("backend vulkan1: this build has no Vulkan backend"),
            "{e}"
        );
        assert!(
            e.contains("--features vulkan") && !e.contains("features cuda"),
            "{e}"
        );
        let e = err("gpu", &["CPU"], None);
        assert!(e.contains("CPU backend only"), "{e}");
        // The backend is built, its driver found nothing and said why.
        let why = "ggml_cuda_init: failed to initialize CUDA: CUDA driver is a stub library";
        let e = err("cuda", &["CUDA", "CPU"], Some(why));
        assert_eq!(e, format!("backend cuda: no CUDA device found ({why})"));
        let e = err("gpu", &["CUDA", "CPU"], Some(why));
        assert!(
            e.starts_with("backend gpu: no GPU found") && e.contains("stub"),
            "{e}"
        );
        let e = err("cuda2", &["CUDA", "CPU"], None);
        assert_eq!(e, "backend cuda2: no device CUDA2 (devices here: CPU)");
    }

    #[test]
    fn this_build_resolves_the_cpu_and_names_what_it_lacks() {
        let cpu = Device::Cpu.resolve().unwrap();
        assert!(cpu.is_cpu());
        assert_eq!(cpu.info().name, "CPU");
        if !cfg!(feature = "cuda") {
            let e = Device::Backend(GpuBackend::Cuda)
                .check()
                .unwrap_err()
                .to_string();
            assert!(e.contains("this build has no CUDA backend"), "{e}");
        }
        if !cfg!(feature = "vulkan") {
            let e = Device::Backend(GpuBackend::Vulkan)
                .check()
                .unwrap_err()
                .to_string();
            assert!(e.contains("this build has no Vulkan backend"), "{e}");
        }
    }
}
