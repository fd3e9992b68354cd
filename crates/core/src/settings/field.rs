//! Metadata of a setting (label, group, help, range) and range checking.

use super::choices::{Choice, Size};
use crate::error::{Error, Result};

/// The groups of the side panel, in the order of the original script.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Group {
    /// Loop count, denoise change and growth curve.
    Loop,
    /// Start size and target size.
    Size,
    /// The img2img settings.
    Img2img,
    /// The ControlNet that guides each loop with its own input.
    ControlNet,
    /// The finishing chain applied after the last loop.
    Finish,
}

impl Group {
    /// The group's heading in help texts and the app.
    pub const fn heading(self) -> &'static str {
        match self {
            Group::Loop => "Loop",
            Group::Size => "Size",
            Group::Img2img => "img2img",
            Group::ControlNet => "ControlNet",
            Group::Finish => "Finishing",
        }
    }
}

/// What kind of control a setting needs, with its allowed values.
#[derive(Debug, Clone, Copy)]
pub enum Control {
    /// An integer slider.
    Int {
        /// Smallest allowed value.
        min: i64,
        /// Largest allowed value.
        max: i64,
        /// Slider step.
        step: i64,
    },
    /// A decimal slider.
    Float {
        /// Smallest allowed value.
        min: f64,
        /// Largest allowed value.
        max: f64,
        /// Slider step.
        step: f64,
    },
    /// One of a list of options.
    Choice {
        /// The options as (command-line key, label) pairs.
        options: fn() -> Vec<(&'static str, &'static str)>,
    },
    /// Free text.
    Text {
        /// Whether the text may span several lines.
        multiline: bool,
    },
    /// On or off.
    Toggle,
    /// A width × height.
    Size {
        /// Smallest allowed side.
        min: u32,
        /// Largest allowed side.
        max: u32,
        /// Both sides must be multiples of this.
        multiple: u32,
    },
}

/// Everything the front ends need to know about one setting.
#[derive(Debug, Clone, Copy)]
pub struct FieldDef {
    /// The key in [`Settings`](super::Settings) and in settings files.
    pub key: &'static str,
    /// The command-line flag, without `--`.
    pub flag: &'static str,
    /// The short label shown in the app.
    pub label: &'static str,
    /// The side-panel group.
    pub group: Group,
    /// A sentence or two of help.
    pub help: &'static str,
    /// The control and its allowed values.
    pub control: Control,
}

/// The (key, label) pairs of a choice type, for [`Control::Choice`].
pub(super) fn options<T: Choice>() -> Vec<(&'static str, &'static str)> {
    T::ALL.iter().map(|c| (c.key(), c.label())).collect()
}

/// A setting value that can be checked against its [`Control`].
pub(super) trait Check {
    /// `Ok` when the value is allowed; otherwise an error naming `key`, the value and the range.
    fn check(&self, key: &str, control: &Control) -> Result<()>;
}

impl Check for u32 {
    fn check(&self, key: &str, control: &Control) -> Result<()> {
        i64::from(*self).check(key, control)
    }
}

impl Check for i64 {
    fn check(&self, key: &str, control: &Control) -> Result<()> {
        match *control {
            Control::Int { min, max, .. } if !(min..=max).contains(self) => Err(Error::setting(
                key,
                self,
                format!("must be between {min} and {max}"),
            )),
            _ => Ok(()),
        }
    }
}

impl Check for f64 {
    fn check(&self, key: &str, control: &Control) -> Result<()> {
        match *control {
            Control::Float { min, max, .. } if !(min..=max).contains(self) => Err(Error::setting(
                key,
                self,
                format!("must be between {min} and {max}"),
            )),
            _ => Ok(()),
        }
    }
}

impl Check for Option<Size> {
    fn check(&self, key: &str, control: &Control) -> Result<()> {
        let (Some(size), Control::Size { min, max, multiple }) = (self, *control) else {
            return Ok(());
        };
        for side in [size.width, size.height] {
            if !(min..=max).contains(&side) || side % multiple != 0 {
                return Err(Error::setting(
                    key,
                    size,
                    format!("each side must be a multiple of {multiple} between {min} and {max}"),
                ));
            }
        }
        Ok(())
    }
}

/// Settings without a range (text, toggles, choices) are always valid.
macro_rules! always_valid {
    ($($ty:ty),*) => {
        $(impl Check for $ty {
            fn check(&self, _key: &str, _control: &Control) -> Result<()> {
                Ok(())
            }
        })*
    };
}

always_valid!(
    String,
    bool,
    super::choices::Curve,
    super::choices::TargetMode,
    super::choices::Sampler,
    super::choices::ScheduleType,
    super::choices::Tiling,
    super::choices::ControlMode,
    super::choices::ControlPreprocess,
    super::choices::ResizeMode,
    super::choices::FilterLevel
);
