//! The core's integration tests: filters and resizing against Pillow, colour correction, metadata, image files, plan properties.
//! One binary for all of them (faster to link than one per file); fixtures are shared from
//! the workspace's `tests/fixtures` and `tests/data`.

mod color_correction;
mod common;
mod exif;
mod filters;
mod io;
mod metadata;
mod plan_props;
mod resize;
