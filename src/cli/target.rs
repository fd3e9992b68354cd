//! Where a command runs and at which precision: the `--device` and `--precision` flags that
//! `run`, `plan` and `bench` share.

use loopback_engine::device::{DeviceSpec, Precision};

/// `--device` and `--precision`.
#[derive(Debug, Clone, Copy, clap::Args)]
pub struct Target {
    /// Where to run: auto, cpu, cuda, cuda:N or metal (for `plan`: where the run would go,
    /// which sets the dtype and, on the CPU, the memory available).
    #[arg(long, default_value = "auto", value_name = "DEVICE")]
    pub device: DeviceSpec,
    /// Precision of the weights and compute: auto (f16 on GPUs; on the CPU bf16 with AMX, else
    /// f32), f32, bf16 or f16. On the CPU, f16 runs the device-generic code CUDA and Metal run (slower than the
    /// CPU's own kernels; half the weights' memory), and bf16 holds every network's weights in
    /// bf16 and runs their matrix products in bf16 on the CPU's own kernels (AMX or
    /// AVX512-BF16 where the CPU has them).
    #[arg(long, default_value = "auto", value_name = "PRECISION")]
    pub precision: Precision,
}
