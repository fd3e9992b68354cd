//! What the system and the device give: memory available, this process's resident and peak
//! memory (Linux `/proc`, the Windows API; chosen at compile time), the limit a run plans for, the weights' dtype, and memory sizes as
//! users type them.

use super::budget::{GIB, MIB};
use crate::device::DeviceSpec;

/// Memory the system can still give (Linux `MemAvailable`, Windows' available physical
/// memory); `None` where it cannot be read.
pub fn available_bytes() -> Option<u64> {
    platform::available_bytes()
}

/// This process's resident memory (Linux `VmRSS`, Windows' working set); `None` where it
/// cannot be read.
pub fn process_rss() -> Option<u64> {
    platform::process_rss()
}

/// This process's peak resident memory (Linux `VmHWM`, Windows' peak working set); `None`
/// where it cannot be read.
pub fn process_peak_rss() -> Option<u64> {
    platform::process_peak_rss()
}

/// Resets the peak resident memory to the current one (Linux ≥ 4.0); false elsewhere.
pub fn reset_peak_rss() -> bool {
    platform::reset_peak_rss()
}

/// Linux: `/proc`.
#[cfg(target_os = "linux")]
mod platform {
    /// A `/proc/meminfo`-style field in bytes.
    fn field(path: &str, key: &str) -> Option<u64> {
        let text = std::fs::read_to_string(path).ok()?;
        let line = text.lines().find(|l| l.starts_with(key))?;
        let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kib * 1024)
    }

    pub fn available_bytes() -> Option<u64> {
        field("/proc/meminfo", "MemAvailable:")
    }

    pub fn process_rss() -> Option<u64> {
        field("/proc/self/status", "VmRSS:")
    }

    pub fn process_peak_rss() -> Option<u64> {
        field("/proc/self/status", "VmHWM:")
    }

    pub fn reset_peak_rss() -> bool {
        std::fs::write("/proc/self/clear_refs", "5").is_ok()
    }
}

/// Windows: `GlobalMemoryStatusEx` and `GetProcessMemoryInfo` (never a read of `/proc`, which
/// Wine would map to a drive).
#[cfg(windows)]
mod platform {
    use windows_sys::Win32::System::ProcessStatus::{
        GetProcessMemoryInfo, PROCESS_MEMORY_COUNTERS,
    };
    use windows_sys::Win32::System::SystemInformation::{GlobalMemoryStatusEx, MEMORYSTATUSEX};
    use windows_sys::Win32::System::Threading::GetCurrentProcess;

    pub fn available_bytes() -> Option<u64> {
        // SAFETY: a zeroed MEMORYSTATUSEX with its length set is what the call expects.
        unsafe {
            let mut status: MEMORYSTATUSEX = std::mem::zeroed();
            status.dwLength = std::mem::size_of::<MEMORYSTATUSEX>() as u32;
            (GlobalMemoryStatusEx(&mut status) != 0).then_some(status.ullAvailPhys)
        }
    }

    fn counters() -> Option<PROCESS_MEMORY_COUNTERS> {
        // SAFETY: the pseudo-handle of this process and a counters struct of the given size.
        unsafe {
            let mut counters: PROCESS_MEMORY_COUNTERS = std::mem::zeroed();
            let size = std::mem::size_of::<PROCESS_MEMORY_COUNTERS>() as u32;
            counters.cb = size;
            (GetProcessMemoryInfo(GetCurrentProcess(), &mut counters, size) != 0)
                .then_some(counters)
        }
    }

    pub fn process_rss() -> Option<u64> {
        counters().map(|c| c.WorkingSetSize as u64)
    }

    pub fn process_peak_rss() -> Option<u64> {
        counters().map(|c| c.PeakWorkingSetSize as u64)
    }

    pub fn reset_peak_rss() -> bool {
        false
    }
}

/// Elsewhere (macOS for now): unknown, so the planner refuses nothing on its own.
#[cfg(not(any(target_os = "linux", windows)))]
mod platform {
    pub fn available_bytes() -> Option<u64> {
        None
    }

    pub fn process_rss() -> Option<u64> {
        None
    }

    pub fn process_peak_rss() -> Option<u64> {
        None
    }

    pub fn reset_peak_rss() -> bool {
        false
    }
}

/// The memory a run on `device` may plan for: `limit` when given; on the CPU what is
/// available plus what this process already holds; on a CUDA GPU its free memory (CUDA's
/// mem-info); `None` on Metal without a limit (the planner then does not refuse anything).
pub fn run_limit(device: DeviceSpec, limit: Option<u64>) -> Option<u64> {
    if limit.is_some() {
        return limit;
    }
    let cuda = candle_core::utils::cuda_is_available();
    match device {
        DeviceSpec::Cuda(n) => cuda_free_bytes(n),
        DeviceSpec::Auto if cuda => cuda_free_bytes(0),
        DeviceSpec::Metal => None,
        DeviceSpec::Auto if candle_core::utils::metal_is_available() => None,
        DeviceSpec::Cpu | DeviceSpec::Auto => Some(available_bytes()? + process_rss().unwrap_or(0)),
    }
}

/// The free memory of CUDA device `ordinal` (CUDA's `cuMemGetInfo`), before anything of the
/// run is loaded on it; `None` without CUDA or when the device cannot be asked.
#[cfg(feature = "cuda")]
pub fn cuda_free_bytes(ordinal: usize) -> Option<u64> {
    use candle_core::cuda::cudarc::driver::CudaContext;
    let context = CudaContext::new(ordinal).ok()?;
    let (free, _total) = context.mem_get_info().ok()?;
    Some(free as u64)
}

/// Without the `cuda` feature there is no CUDA device to ask.
#[cfg(not(feature = "cuda"))]
pub fn cuda_free_bytes(_ordinal: usize) -> Option<u64> {
    None
}

/// Whether `device` names (or, for `auto`, finds) a GPU, without opening it.
pub(crate) fn is_gpu(device: DeviceSpec) -> bool {
    match device {
        DeviceSpec::Cpu => false,
        DeviceSpec::Cuda(_) | DeviceSpec::Metal => true,
        DeviceSpec::Auto => {
            candle_core::utils::cuda_is_available() || candle_core::utils::metal_is_available()
        }
    }
}

/// Parses a memory size: `6G`, `6GiB`, `6000M`, `512MiB`, or bytes.
pub fn parse_bytes(text: &str) -> std::result::Result<u64, String> {
    let t = text.trim().to_ascii_lowercase();
    let digits = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(digits);
    let value: f64 = num
        .parse()
        .map_err(|_| format!("{text:?} is not a size (e.g. 6G, 512M)"))?;
    let mult = match unit.trim() {
        "" | "b" => 1.0,
        "k" | "kb" | "kib" => 1024.0,
        "m" | "mb" | "mib" => MIB as f64,
        "g" | "gb" | "gib" => GIB,
        "t" | "tb" | "tib" => GIB * 1024.0,
        _ => return Err(format!("{text:?}: unknown unit (use K, M, G or T)")),
    };
    if !(value.is_finite() && value > 0.0) {
        return Err(format!("{text:?} must be a positive size"));
    }
    Ok((value * mult) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_bytes("6G").unwrap(), 6 << 30);
        assert_eq!(parse_bytes("512MiB").unwrap(), 512 << 20);
        assert_eq!(parse_bytes("1.5g").unwrap(), 3 << 29);
        assert!(parse_bytes("lots").is_err());
        assert!(parse_bytes("0").is_err());
    }

    #[test]
    #[cfg(any(target_os = "linux", windows))]
    fn this_process_and_system_memory_are_read() {
        let rss = process_rss().unwrap();
        assert!(rss > 1 << 20, "{rss}");
        assert!(process_peak_rss().unwrap() >= rss);
        assert!(available_bytes().unwrap() > 0);
    }
}
