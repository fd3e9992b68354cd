//! Run-time detection of the bf16 instructions: CPUID for what the CPU has, and on Linux the
//! kernel's permission to use the AMX tile registers. Nothing here depends on the flags the
//! crate was compiled with.

use super::Bf16Isa;

/// What this CPU and OS allow, best first: `(amx, avx512bf16)`.
#[cfg(target_arch = "x86_64")]
fn features() -> (bool, bool) {
    use std::arch::x86_64::{__cpuid_count, __get_cpuid_max};
    use std::sync::OnceLock;
    static FEATURES: OnceLock<(bool, bool)> = OnceLock::new();
    *FEATURES.get_or_init(|| {
        // Both fast paths pack with AVX-512 (F + BW) code.
        if !is_x86_feature_detected!("avx512f") || !is_x86_feature_detected!("avx512bw") {
            return (false, false);
        }
        // Leaf 7 only where the maximum basic leaf reaches it, subleaf 1 only where leaf 7
        // reports it.
        if __get_cpuid_max(0).0 < 7 {
            return (false, false);
        }
        let leaf7 = __cpuid_count(7, 0);
        let leaf7_1 = (leaf7.eax >= 1).then(|| __cpuid_count(7, 1));
        let avx512bf16 = leaf7_1.is_some_and(|l| l.eax & (1 << 5) != 0);
        let amx_tile = leaf7.edx & (1 << 24) != 0;
        let amx_bf16 = leaf7.edx & (1 << 22) != 0;
        let amx = amx_tile && amx_bf16 && request_tile_data();
        (amx, avx512bf16)
    })
}

/// Asks Linux for the tile data state (`arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA)`);
/// without it the first tile instruction kills the process. The permission is the process's,
/// for all its threads.
#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
fn request_tile_data() -> bool {
    const ARCH_REQ_XCOMP_PERM: libc::c_long = 0x1023;
    const XFEATURE_XTILEDATA: libc::c_long = 18;
    // SAFETY: arch_prctl with these arguments only changes the process's permissions; it
    // reads and writes no user memory.
    unsafe {
        libc::syscall(
            libc::SYS_arch_prctl,
            ARCH_REQ_XCOMP_PERM,
            XFEATURE_XTILEDATA,
        ) == 0
    }
}

/// AMX needs an OS that enables its state on request; only Linux is supported.
#[cfg(all(target_arch = "x86_64", not(target_os = "linux")))]
fn request_tile_data() -> bool {
    false
}

/// Whether this CPU (and OS) can run `isa`.
pub(super) fn available(isa: Bf16Isa) -> bool {
    match isa {
        Bf16Isa::Emulated => true,
        #[cfg(target_arch = "x86_64")]
        Bf16Isa::Amx => features().0,
        #[cfg(target_arch = "x86_64")]
        Bf16Isa::Avx512Bf16 => features().1,
        #[cfg(not(target_arch = "x86_64"))]
        _ => false,
    }
}

/// The best path this CPU has.
pub(super) fn best() -> Bf16Isa {
    [Bf16Isa::Amx, Bf16Isa::Avx512Bf16]
        .into_iter()
        .find(|&isa| available(isa))
        .unwrap_or(Bf16Isa::Emulated)
}

/// The path `isa()` reports: the best one, or a lower one named by `LOOPBACK_BF16_ISA`
/// (`amx`, `avx512bf16` or `emulated`; names of paths above the best, of paths this CPU lacks,
/// and unknown names are ignored).
pub(super) fn chosen(requested: Option<&str>) -> Bf16Isa {
    let best = best();
    match requested.and_then(Bf16Isa::from_name) {
        Some(isa) if isa.rank() >= best.rank() && available(isa) => isa,
        _ => best,
    }
}
