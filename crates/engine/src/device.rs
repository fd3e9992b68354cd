//! Choosing the compute device and the weights' dtype.

use candle_core::{DType, Device};

use loopback_core::{Error, Result};

/// Which device to run on, as given by `--device`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceSpec {
    /// The best available: CUDA, then Metal, then the CPU.
    Auto,
    /// The CPU.
    Cpu,
    /// The CUDA GPU with this ordinal.
    Cuda(usize),
    /// The Apple GPU.
    Metal,
}

impl std::str::FromStr for DeviceSpec {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "auto" => Ok(DeviceSpec::Auto),
            "cpu" => Ok(DeviceSpec::Cpu),
            "cuda" | "gpu" => Ok(DeviceSpec::Cuda(0)),
            "metal" | "mps" => Ok(DeviceSpec::Metal),
            other => match other.strip_prefix("cuda:").map(str::parse) {
                Some(Ok(n)) => Ok(DeviceSpec::Cuda(n)),
                _ => Err(format!(
                    "unknown device {s:?} (use auto, cpu, cuda, cuda:N or metal)"
                )),
            },
        }
    }
}

/// The device and the dtype for weights on it: f16 on GPUs, f32 on the CPU.
pub fn select(spec: DeviceSpec) -> Result<(Device, DType)> {
    let unavailable = |what: &str, e: candle_core::Error| {
        Error::Engine(format!(
            "{what} is not available: {} (this build's features: {})",
            crate::error::candle_msg(&e),
            compiled_features()
        ))
    };
    match spec {
        DeviceSpec::Cpu => Ok((Device::Cpu, DType::F32)),
        DeviceSpec::Cuda(n) => Device::new_cuda(n)
            .map(|d| (d, DType::F16))
            .map_err(|e| unavailable(&format!("CUDA device {n}"), e)),
        DeviceSpec::Metal => Device::new_metal(0)
            .map(|d| (d, DType::F16))
            .map_err(|e| unavailable("Metal", e)),
        DeviceSpec::Auto => {
            if candle_core::utils::cuda_is_available() {
                select(DeviceSpec::Cuda(0))
            } else if candle_core::utils::metal_is_available() {
                select(DeviceSpec::Metal)
            } else {
                select(DeviceSpec::Cpu)
            }
        }
    }
}

/// The GPU backends compiled into this build.
pub fn compiled_features() -> &'static str {
    match (cfg!(feature = "cuda"), cfg!(feature = "metal")) {
        (true, true) => "cuda, metal",
        (true, false) => "cuda",
        (false, true) => "metal",
        (false, false) => "CPU only; rebuild with --features cuda or --features metal",
    }
}

/// A short name of a device for messages.
pub fn describe(device: &Device) -> String {
    match device {
        Device::Cpu => format!("CPU ({} threads)", candle_core::utils::get_num_threads()),
        Device::Cuda(_) => "CUDA GPU".into(),
        Device::Metal(_) => "Metal GPU".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_device_specs() {
        assert_eq!("auto".parse(), Ok(DeviceSpec::Auto));
        assert_eq!("CPU".parse(), Ok(DeviceSpec::Cpu));
        assert_eq!("cuda:1".parse(), Ok(DeviceSpec::Cuda(1)));
        assert_eq!("metal".parse(), Ok(DeviceSpec::Metal));
        assert!("tpu".parse::<DeviceSpec>().is_err());
    }

    #[test]
    fn cpu_is_f32_and_missing_gpu_is_a_clear_error() {
        let (device, dtype) = select(DeviceSpec::Cpu).unwrap();
        assert!(device.is_cpu() && dtype == DType::F32);
        if !cfg!(feature = "cuda") {
            let err = select(DeviceSpec::Cuda(0)).unwrap_err().to_string();
            assert!(err.contains("CUDA device 0 is not available"), "{err}");
            assert!(!err.contains('\n'));
        }
    }
}
