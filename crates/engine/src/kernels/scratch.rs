//! Scratch buffers the kernels keep between calls instead of allocating fresh ones.

/// Makes a reused scratch buffer at least `len` floats long. Its contents are left over from
/// earlier use (callers write before they read); when it must grow, the old buffer is freed
/// first, since growing in place would copy contents nobody reads.
pub(crate) fn grow_scratch(buffer: &mut Vec<f32>, len: usize) {
    if buffer.len() < len {
        *buffer = Vec::new();
        *buffer = vec![0f32; len];
    }
}
