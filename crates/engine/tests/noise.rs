//! `torch.randn` parity: every case of `tests/fixtures/noise/*.json` (written by
//! `tools/parity/randn.py` with PyTorch) must be reproduced bit for bit.

use crate::common;

use loopback_engine::scheduler::noise::{NormalKernel, TorchGenerator, randn_seeded};
use serde::Deserialize;

/// One fixture file.
#[derive(Deserialize)]
struct Fixture {
    torch_version: String,
    cases: Vec<Case>,
}

/// A seed and the successive `torch.randn` calls made on one generator.
#[derive(Deserialize)]
struct Case {
    seed: u64,
    calls: Vec<Call>,
}

/// The expected result of one call: all bits, or head, tail and a hash of all bits.
#[derive(Deserialize)]
struct Call {
    numel: usize,
    bits: Option<Vec<u32>>,
    head: Option<Vec<u32>>,
    tail: Option<Vec<u32>>,
    fnv1a64: Option<String>,
}

fn load(name: &str) -> Fixture {
    let path = format!("{}/tests/fixtures/noise/{name}", common::ROOT);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn bits(values: &[f32]) -> Vec<u32> {
    values.iter().map(|v| v.to_bits()).collect()
}

/// 64-bit FNV-1a of the little-endian bytes of the values, as in `randn.py`.
fn fnv1a64(values: &[f32]) -> String {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in values.iter().flat_map(|v| v.to_le_bytes()) {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("{hash:016x}")
}

fn check_call(got: &[f32], want: &Call, what: &str) {
    assert_eq!(got.len(), want.numel, "{what}: length");
    if let Some(all) = &want.bits {
        assert_eq!(bits(got), *all, "{what}: values");
        return;
    }
    let (head, tail, hash) = match (&want.head, &want.tail, &want.fnv1a64) {
        (Some(h), Some(t), Some(x)) => (h, t, x),
        _ => panic!("{what}: fixture call has neither bits nor head/tail/fnv1a64"),
    };
    assert_eq!(bits(&got[..head.len()]), *head, "{what}: first values");
    assert_eq!(
        bits(&got[got.len() - tail.len()..]),
        *tail,
        "{what}: last values"
    );
    assert_eq!(fnv1a64(got), *hash, "{what}: hash of all values");
}

/// Checks every case of a fixture file; returns the number of calls checked.
fn check_fixture(name: &str, kernel: NormalKernel) -> usize {
    let fixture = load(name);
    assert!(!fixture.torch_version.is_empty());
    let mut calls = 0;
    for case in &fixture.cases {
        let mut generator = TorchGenerator::with_kernel(case.seed, kernel);
        for (i, call) in case.calls.iter().enumerate() {
            let got = generator.randn(call.numel);
            let what = format!(
                "{name} (torch {}) seed {} call {i} numel {}",
                fixture.torch_version, case.seed, call.numel
            );
            check_call(&got, call, &what);
            calls += 1;
        }
    }
    calls
}

#[test]
fn avx2_kernel_matches_torch() {
    let calls = check_fixture("randn_avx2.json", NormalKernel::Avx2);
    assert!(calls >= 60, "only {calls} calls checked");
}

/// The portable kernel uses Rust's `f32` `ln`/`sin`/`cos`, which match PyTorch only where both
/// call glibc's libm.
#[test]
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn portable_kernel_matches_torch_with_glibc() {
    let calls = check_fixture("randn_portable.json", NormalKernel::Portable);
    assert!(calls >= 60, "only {calls} calls checked");
}

#[test]
fn kernels_agree_below_16_elements() {
    for numel in 0..16 {
        let a = TorchGenerator::with_kernel(3, NormalKernel::Avx2).randn(numel);
        let b = TorchGenerator::with_kernel(3, NormalKernel::Portable).randn(numel);
        assert_eq!(bits(&a), bits(&b), "numel {numel}");
    }
}

#[test]
fn randn_seeded_is_a_fresh_generator() {
    let mut generator = TorchGenerator::new(42);
    assert_eq!(generator.kernel(), NormalKernel::Avx2);
    assert_eq!(bits(&randn_seeded(42, 100)), bits(&generator.randn(100)));
}

#[test]
fn manual_seed_restarts_the_stream_and_drops_the_cached_normal() {
    let mut generator = TorchGenerator::new(5);
    let first = generator.randn(3);
    generator.manual_seed(5);
    assert_eq!(generator.seed(), 5);
    assert_eq!(bits(&generator.randn(3)), bits(&first));
}

#[test]
fn only_the_low_32_bits_of_the_seed_count() {
    assert_eq!(
        bits(&randn_seeded((1 << 32) + 5, 40)),
        bits(&randn_seeded(5, 40))
    );
}

/// The reference MT19937 (`init_genrand(5489)`): its 10000th output is 4123659995.
#[test]
fn engine_is_the_reference_mt19937() {
    let mut generator = TorchGenerator::new(5489);
    let last = (0..10_000).map(|_| generator.next_u32()).last();
    assert_eq!(last, Some(4_123_659_995));
}
