//! Every setting of the app, defined once.

mod choices;

pub use choices::{Choice, Curve, FilterLevel, ResizeMode, Sampler, Size, TargetMode};

/// All settings.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Settings {}
