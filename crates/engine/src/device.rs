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

/// The precision weights are stored and computed in (`--precision`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Precision {
    /// f16 on CUDA and Metal; on the CPU bf16 where it has AMX, else f32
    /// ([`Precision::resolve`]).
    #[default]
    Auto,
    /// 32-bit floats.
    F32,
    /// bfloat16 (f32's range, 8 bits of mantissa).
    Bf16,
    /// IEEE half precision.
    F16,
}

impl std::str::FromStr for Precision {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "auto" => Ok(Precision::Auto),
            "f32" | "fp32" | "float32" | "full" => Ok(Precision::F32),
            "bf16" | "bfloat16" => Ok(Precision::Bf16),
            "f16" | "fp16" | "float16" | "half" => Ok(Precision::F16),
            _ => Err(format!(
                "unknown precision {s:?} (use auto, f32, bf16 or f16)"
            )),
        }
    }
}

impl Precision {
    /// The weights' dtype on `device`.
    pub fn dtype_on(self, device: &Device) -> DType {
        match self.resolve(!device.is_cpu()) {
            Precision::F16 => DType::F16,
            Precision::Auto | Precision::F32 => DType::F32,
            Precision::Bf16 => DType::BF16,
        }
    }

    /// What `auto` becomes (any other precision is itself): f16 on a GPU; on the CPU bf16
    /// where it has AMX, whose bf16 loops run about 1.4× faster than f32 in 57 % of the memory
    /// and stay closer to f32 than PyTorch's bf16 (docs/performance.md), else f32 (AVX512-BF16
    /// alone measured slower than the f32 kernels). `LOOPBACK_BF16_ISA` lowering the kernels'
    /// choice below AMX makes it f32 too.
    pub fn resolve(self, gpu: bool) -> Precision {
        use crate::kernels::bf16::{Bf16Isa, isa};
        match self {
            Precision::Auto if gpu => Precision::F16,
            Precision::Auto if isa() == Bf16Isa::Amx => Precision::Bf16,
            Precision::Auto => Precision::F32,
            chosen => chosen,
        }
    }

    /// The name `--precision` takes.
    pub fn label(self) -> &'static str {
        match self {
            Precision::Auto => "auto",
            Precision::F32 => "f32",
            Precision::Bf16 => "bf16",
            Precision::F16 => "f16",
        }
    }
}

/// The device and the dtype for weights on it at the default precision (`auto`, see
/// [`Precision::resolve`]).
pub fn select(spec: DeviceSpec) -> Result<(Device, DType)> {
    select_with(spec, Precision::Auto)
}

/// The device `spec` names and the dtype `precision` gives on it. On the CPU, f32 takes the
/// engine's own kernels; f16 takes the device-generic tensor code that CUDA and Metal run (no
/// CPU-only kernel), which is how that path is tested without a GPU; bf16 keeps f32 tensors
/// and runs every network's products in bf16 on bf16 weights (the model's
/// [`crate::kernels::compute::Compute`]).
pub fn select_with(spec: DeviceSpec, precision: Precision) -> Result<(Device, DType)> {
    let (device, _) = select_device(spec)?;
    Ok((device.clone(), precision.dtype_on(&device)))
}

/// A line for the user when `dtype` on `device` is not what they may expect: bf16 on a CPU
/// without bf16 instructions keeps only the weights in bf16 and computes in f32
/// ([`crate::kernels::compute::Compute::Bf16Weights`]).
pub fn precision_note(device: &Device, dtype: DType) -> Option<String> {
    use crate::kernels::bf16::{Bf16Isa, isa};
    (device.is_cpu() && dtype == DType::BF16 && isa() == Bf16Isa::Emulated).then(|| {
        "this CPU has no bf16 instructions (AMX or AVX512-BF16): bf16 holds the weights in \
         bf16 (half the memory) and computes in f32, at f32's speed"
            .to_string()
    })
}

fn select_device(spec: DeviceSpec) -> Result<(Device, DType)> {
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
                select_device(DeviceSpec::Cuda(0))
            } else if candle_core::utils::metal_is_available() {
                select_device(DeviceSpec::Metal)
            } else {
                select_device(DeviceSpec::Cpu)
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
    fn precisions_parse_and_choose_dtypes() {
        assert_eq!("fp16".parse(), Ok(Precision::F16));
        assert_eq!("BF16".parse(), Ok(Precision::Bf16));
        assert!("int8".parse::<Precision>().is_err());
        // auto: f16 on a GPU; on the CPU bf16 with AMX, else f32; the others are themselves.
        use crate::kernels::bf16::{Bf16Isa, isa};
        let amx = isa() == Bf16Isa::Amx;
        assert_eq!(Precision::Auto.resolve(true), Precision::F16);
        let cpu_auto = if amx { Precision::Bf16 } else { Precision::F32 };
        assert_eq!(Precision::Auto.resolve(false), cpu_auto);
        for p in [Precision::F32, Precision::Bf16, Precision::F16] {
            assert_eq!((p.resolve(true), p.resolve(false)), (p, p));
        }
        let (cpu, auto) = select_with(DeviceSpec::Cpu, Precision::Auto).unwrap();
        assert!(cpu.is_cpu() && auto == if amx { DType::BF16 } else { DType::F32 });
        assert_eq!(
            select_with(DeviceSpec::Cpu, Precision::F16).unwrap().1,
            DType::F16
        );
        assert_eq!(
            select_with(DeviceSpec::Cpu, Precision::Bf16).unwrap().1,
            DType::BF16
        );
        // bf16 on the CPU says so when it has no bf16 instructions, and only then.
        assert_eq!(precision_note(&cpu, DType::F32), None);
        let note = precision_note(&cpu, DType::BF16);
        assert_eq!(note.is_some(), isa() == Bf16Isa::Emulated);
        assert!(note.is_none_or(|n| n.contains("computes in f32") && !n.contains('\n')));
    }

    #[test]
    fn cpu_takes_auto_and_missing_gpu_is_a_clear_error() {
        let (device, dtype) = select(DeviceSpec::Cpu).unwrap();
        assert!(device.is_cpu());
        assert_eq!(dtype, Precision::Auto.dtype_on(&device));
        if !cfg!(feature = "cuda") {
            let err = select(DeviceSpec::Cuda(0)).unwrap_err().to_string();
            assert!(err.contains("CUDA device 0 is not available"), "{err}");
            assert!(!err.contains('\n'));
        }
    }
}
