//! The units of the planner's numbers, the share of memory it plans for, and how it writes
//! sizes in messages.

/// Bytes in a MiB.
pub(super) const MIB: u64 = 1 << 20;
/// Bytes in a GiB.
pub(super) const GIB: f64 = (1u64 << 30) as f64;

/// Only this share of the available memory is planned for; the rest is headroom.
pub const HEADROOM: f64 = 0.9;

/// Bytes for messages: GiB with one decimal, or whole MiB below 1 GiB.
pub fn gib(bytes: u64) -> String {
    if (bytes as f64) < GIB {
        format!("{} MiB", bytes.div_ceil(MIB))
    } else {
        format!("{:.1} GiB", bytes as f64 / GIB)
    }
}
