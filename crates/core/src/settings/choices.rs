//! The settings that are a choice among named options, and the [`Size`] type.
//!
//! Each choice has three spellings: the command-line / JSON value (`kebab-case`), the label
//! shown in the app and written to A1111 metadata, and the Rust variant.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A setting whose value is one of a fixed list of named options.
pub trait Choice: Copy + PartialEq + Sized + 'static {
    /// Every option, in display order.
    const ALL: &'static [Self];
    /// The value used on the command line and in JSON.
    fn key(self) -> &'static str;
    /// The human label, as shown in the app.
    fn label(self) -> &'static str;
    /// Parses a command-line/JSON key or a label (case-insensitive).
    fn parse(text: &str) -> Option<Self> {
        let text = text.trim();
        Self::ALL
            .iter()
            .copied()
            .find(|c| c.key().eq_ignore_ascii_case(text) || c.label().eq_ignore_ascii_case(text))
    }
}

/// Declares a `Choice` enum with its keys and labels.
macro_rules! choice_enum {
    (
        $(#[$meta:meta])*
        $name:ident {
            $( $(#[doc = $doc:literal])* $variant:ident = ($key:literal, $label:literal), )+
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
        #[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
        pub enum $name {
            $(
                $(#[doc = $doc])*
                #[serde(rename = $key)]
                #[cfg_attr(feature = "clap", value(name = $key))]
                $variant,
            )+
        }

        impl Choice for $name {
            const ALL: &'static [Self] = &[$($name::$variant),+];
            fn key(self) -> &'static str {
                match self { $($name::$variant => $key),+ }
            }
            fn label(self) -> &'static str {
                match self { $($name::$variant => $label),+ }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.key())
            }
        }
    };
}

choice_enum! {
    /// How the size grows from loop to loop (`docs/algorithm.md`, "The plan").
    Curve {
        /// Equal steps.
        Linear = ("linear", "Linear"),
        /// Steps scaled by the brightness of each loop's input.
        Adaptive = ("adaptive", "Adaptive"),
        /// `1 − cos(πp/2)`.
        EaseInSine = ("ease-in-sine", "Ease In: Sine"),
        /// `p³`.
        EaseInCubic = ("ease-in-cubic", "Ease In: Cubic"),
        /// `p⁵`.
        EaseInQuint = ("ease-in-quint", "Ease In: Quint"),
        /// `1 − √(1 − p²)`.
        EaseInCirc = ("ease-in-circ", "Ease In: Circ"),
        /// `sin(πp/2)`.
        EaseOutSine = ("ease-out-sine", "Ease Out: Sine"),
        /// `1 − (1 − p)³`.
        EaseOutCubic = ("ease-out-cubic", "Ease Out: Cubic"),
        /// `1 − (1 − p)⁵`.
        EaseOutQuint = ("ease-out-quint", "Ease Out: Quint"),
        /// `√(1 − (p − 1)²)`.
        EaseOutCirc = ("ease-out-circ", "Ease Out: Circ"),
        /// `−(cos(πp) − 1)/2`.
        EaseInOutSine = ("ease-in-out-sine", "Ease InOut: Sine"),
        /// Cubic in, cubic out.
        EaseInOutCubic = ("ease-in-out-cubic", "Ease InOut: Cubic"),
        /// Quintic in, quintic out.
        EaseInOutQuint = ("ease-in-out-quint", "Ease InOut: Quint"),
        /// Circular in, circular out.
        EaseInOutCirc = ("ease-in-out-circ", "Ease InOut: Circ"),
    }
}

choice_enum! {
    /// How the final size is chosen.
    TargetMode {
        /// The largest size of the start ratio inside the maximum width × height.
        MaxSize = ("max-size", "Max size"),
        /// The start size times the scale factor.
        Scale = ("scale", "Scale"),
    }
}

choice_enum! {
    /// The diffusion sampler (A1111's names as labels). Its noise schedule is the
    /// [`ScheduleType`] setting.
    Sampler {
        /// DDIM, eta 0.
        Ddim = ("ddim", "DDIM"),
        /// Euler.
        Euler = ("euler", "Euler"),
        /// Euler ancestral.
        EulerA = ("euler-a", "Euler a"),
        /// Heun: two UNet calls per step.
        Heun = ("heun", "Heun"),
        /// DPM-Solver++ (2M); A1111's automatic schedule for it is Karras.
        DpmPp2m = ("dpmpp-2m", "DPM++ 2M"),
        /// DPM-Solver++ (2M) with Karras sigmas: A1111's name before schedule types were a
        /// setting of their own (= DPM++ 2M with the Karras schedule).
        DpmPp2mKarras = ("dpmpp-2m-karras", "DPM++ 2M Karras"),
        /// DPM++ SDE: second order, two UNet calls per step, fresh (Brownian) noise; A1111's
        /// automatic schedule for it is Karras.
        DpmPpSde = ("dpmpp-sde", "DPM++ SDE"),
        /// DPM-Solver++ (2M) SDE: fresh noise every step; A1111's automatic schedule for it is
        /// exponential.
        DpmPp2mSde = ("dpmpp-2m-sde", "DPM++ 2M SDE"),
        /// UniPC (bh2, order 2): a predictor–corrector multistep solver.
        UniPc = ("unipc", "UniPC"),
        /// LCM, for LCM-LoRAs and LCM models: 4–8 steps, CFG 1–2.
        Lcm = ("lcm", "LCM"),
    }
}

choice_enum! {
    /// The noise schedule a sampler steps through (A1111's "Schedule type").
    ScheduleType {
        /// The one A1111 names for the sampler: Karras for DPM++ 2M and DPM++ SDE, exponential
        /// for DPM++ 2M SDE, otherwise the model's own.
        Automatic = ("automatic", "Automatic"),
        /// The model's own: its scheduler config's timestep spacing.
        Uniform = ("uniform", "Uniform"),
        /// Karras et al.'s sigmas (rho 7).
        Karras = ("karras", "Karras"),
        /// Sigmas evenly spaced in log.
        Exponential = ("exponential", "Exponential"),
        /// SGM's uniform timesteps (diffusers' `trailing` spacing).
        SgmUniform = ("sgm-uniform", "SGM Uniform"),
    }
}

impl Sampler {
    /// The schedule `schedule` means for this sampler: `Automatic` resolved as A1111 resolves
    /// it, and the old combined name DPM++ 2M Karras always Karras.
    pub fn schedule(self, schedule: ScheduleType) -> ScheduleType {
        match (self, schedule) {
            (Sampler::DpmPp2mKarras, _)
            | (Sampler::DpmPp2m | Sampler::DpmPpSde, ScheduleType::Automatic) => {
                ScheduleType::Karras
            }
            (Sampler::DpmPp2mSde, ScheduleType::Automatic) => ScheduleType::Exponential,
            (_, ScheduleType::Automatic) => ScheduleType::Uniform,
            (_, other) => other,
        }
    }

    /// An A1111 sampler name with an old-style schedule suffix (`DPM++ 2M Karras`, `Euler a
    /// Exponential`): the sampler and the schedule it names, if any.
    pub fn parse_a1111(name: &str) -> Option<(Sampler, Option<ScheduleType>)> {
        if let Some(sampler) = Sampler::parse(name) {
            return Some((sampler, None));
        }
        let name = name.trim();
        for schedule in [ScheduleType::Karras, ScheduleType::Exponential] {
            let suffix = format!(" {}", schedule.label());
            if name.len() > suffix.len()
                && name.is_char_boundary(name.len() - suffix.len())
                && name[name.len() - suffix.len()..].eq_ignore_ascii_case(&suffix)
            {
                let base = &name[..name.len() - suffix.len()];
                return Sampler::parse(base).map(|s| (s, Some(schedule)));
            }
        }
        None
    }
}

choice_enum! {
    /// Tiled diffusion: whether a loop denoises in overlapping tiles.
    Tiling {
        /// For loops past 1.5 × the model's native size.
        Auto = ("auto", "Auto"),
        /// Never.
        Off = ("off", "Off"),
        /// Every loop larger than one tile.
        On = ("on", "Always"),
    }
}

choice_enum! {
    /// How a ControlNet's residuals are weighted against the prompt (the sd-webui-controlnet
    /// extension's "Control Mode").
    ControlMode {
        /// Every residual at the weight, on both guidance rows.
        Balanced = ("balanced", "Balanced"),
        /// "My prompt is more important": residuals fade towards the UNet's input (the
        /// weight × 0.825^(12 − i) of SD 1.5's 13), on both rows.
        Prompt = ("prompt", "My prompt is more important"),
        /// "ControlNet is more important": those faded residuals on the prompt's row only,
        /// so guidance pushes towards the control.
        ControlNet = ("controlnet", "ControlNet is more important"),
    }
}

choice_enum! {
    /// What becomes a loop's control image (the extension's preprocessor, "Module").
    ControlPreprocess {
        /// The loop's input as it is.
        None = ("none", "none"),
        /// The tile model's preprocessor: the input shrunk by the resample rate (area
        /// average), then brought back to the loop's size.
        TileResample = ("tile-resample", "tile_resample"),
    }
}

choice_enum! {
    /// How an image is fitted to a size of another aspect ratio (A1111's resize modes).
    ResizeMode {
        /// Stretch to the size.
        JustResize = ("just-resize", "Just resize"),
        /// Scale to cover the size, then crop the centre.
        CropAndResize = ("crop-and-resize", "Crop and resize"),
        /// Scale to fit inside the size, then fill the borders from the edge pixels.
        ResizeAndFill = ("resize-and-fill", "Resize and fill"),
    }
}

choice_enum! {
    /// How many passes of a Pillow filter the finishing chain applies.
    FilterLevel {
        /// No pass.
        None = ("none", "None"),
        /// One pass.
        Low = ("low", "Low"),
        /// Two passes.
        Medium = ("medium", "Medium"),
        /// Three passes.
        High = ("high", "High"),
    }
}

impl FilterLevel {
    /// The number of filter passes: 0, 1, 2 or 3.
    pub fn passes(self) -> usize {
        match self {
            FilterLevel::None => 0,
            FilterLevel::Low => 1,
            FilterLevel::Medium => 2,
            FilterLevel::High => 3,
        }
    }
}

/// A width × height in pixels; written `WxH` on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Size {
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
}

impl Size {
    /// A new size.
    pub const fn new(width: u32, height: u32) -> Self {
        Size { width, height }
    }

    /// Both sides rounded down to multiples of 8.
    pub fn floor8(self) -> Self {
        Size::new(self.width / 8 * 8, self.height / 8 * 8)
    }
}

impl fmt::Display for Size {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}x{}", self.width, self.height)
    }
}

impl FromStr for Size {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || format!("expected WIDTHxHEIGHT such as 512x768, got {s:?}");
        let (w, h) = s.trim().split_once(['x', 'X', '×']).ok_or_else(bad)?;
        let width = w.trim().parse().map_err(|_| bad())?;
        let height = h.trim().parse().map_err(|_| bad())?;
        Ok(Size { width, height })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn size_parses_and_prints() {
        assert_eq!("512x768".parse::<Size>(), Ok(Size::new(512, 768)));
        assert_eq!(" 64 X 72 ".parse::<Size>(), Ok(Size::new(64, 72)));
        assert!("512".parse::<Size>().is_err());
        assert!("ax3".parse::<Size>().is_err());
        assert_eq!(Size::new(1, 2).to_string(), "1x2");
    }

    #[test]
    fn choices_parse_keys_and_labels() {
        assert_eq!(Sampler::parse("Euler a"), Some(Sampler::EulerA));
        assert_eq!(
            Sampler::parse("dpmpp-2m-karras"),
            Some(Sampler::DpmPp2mKarras)
        );
        assert_eq!(Curve::parse("Ease InOut: Circ"), Some(Curve::EaseInOutCirc));
        assert_eq!(Curve::ALL.len(), 14);
        assert_eq!(FilterLevel::High.passes(), 3);
        assert_eq!(ResizeMode::parse("bogus"), None);
    }

    #[test]
    fn samplers_resolve_their_schedule_as_a1111() {
        use ScheduleType::*;
        assert_eq!(Sampler::DpmPp2m.schedule(Automatic), Karras);
        assert_eq!(Sampler::DpmPp2m.schedule(Exponential), Exponential);
        assert_eq!(Sampler::DpmPp2mKarras.schedule(Uniform), Karras);
        assert_eq!(Sampler::Euler.schedule(Automatic), Uniform);
        assert_eq!(Sampler::EulerA.schedule(SgmUniform), SgmUniform);
        // Old combined names.
        assert_eq!(
            Sampler::parse_a1111("DPM++ 2M Karras"),
            Some((Sampler::DpmPp2mKarras, None))
        );
        assert_eq!(
            Sampler::parse_a1111("Euler a Exponential"),
            Some((Sampler::EulerA, Some(Exponential)))
        );
        assert_eq!(Sampler::parse_a1111("Euler"), Some((Sampler::Euler, None)));
        assert_eq!(Sampler::parse_a1111("UniPC"), Some((Sampler::UniPc, None)));
        assert_eq!(Sampler::parse_a1111("DPM adaptive"), None);
        assert_eq!(ScheduleType::parse("SGM Uniform"), Some(SgmUniform));
    }
}
