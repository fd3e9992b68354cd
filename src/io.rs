//! Reading images with clear errors, and writing outputs atomically.
