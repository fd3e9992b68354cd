//! Every setting of the app, defined once.
//!
//! The [`define_settings!`](self) table below is the single source of truth: from it come the
//! [`Settings`] struct (serde-(de)serialisable, used by the engine), its defaults, the
//! [`FIELDS`] metadata (label, group, help, range: the GUI builds its controls from it),
//! validation, and (with the `clap` feature, which the app turns on) `SettingsArgs`, the clap flags
//! of every command that takes settings.
//!
//! The table's last section, `finishing`, holds the settings of the finishing chain (the
//! `Finish` group). Each also names its A1111 infotext key and its place among them; from
//! these come the [`Finishing`] struct (what `imageops::finish` applies), its identity
//! default, [`Settings::finishing`] and [`Settings::set_finishing`], and
//! [`FINISHING_INFOTEXT`], from which the metadata writes and reads them. A new filter is one
//! entry there plus its filter code in `imageops::finish`, which the compiler asks for.
//!
//! Precedence when a command runs: built-in defaults, then a `--settings FILE.json`, then flags.

mod a1111;
mod choices;
mod field;

use std::path::Path;

use serde::{Deserialize, Serialize};

pub use a1111::{InfotextField, InfotextValue, ValueKind, py_bool, py_float};
pub use choices::{
    Choice, ControlMode, ControlPreprocess, Curve, FilterLevel, ResizeMode, Sampler, ScheduleType,
    Size, TargetMode, Tiling,
};
pub use field::{Control, FieldDef, Group};

use crate::error::{Error, Result};
use field::Check;

/// The largest seed; seeds are 32-bit as in A1111.
pub const MAX_SEED: i64 = u32::MAX as i64;

macro_rules! define_settings {
    // The table: every setting, then the finishing settings with their infotext key and place.
    (
        $(
            $(#[doc = $doc:literal])+
            $field:ident : $ty:ty = $default:expr,
                arg $argty:ty $([$($argattr:tt)*])?, flag $flag:literal, group $group:ident, label $label:literal,
                control $control:expr;
        )+
        finishing {
            $(
                $(#[doc = $fdoc:literal])+
                $ffield:ident : $fty:ty = $fdefault:expr,
                    arg $fargty:ty $([$($fargattr:tt)*])?, flag $fflag:literal, label $flabel:literal,
                    control $fcontrol:expr, infotext $fkey:literal at $fpos:literal;
            )+
        }
    ) => {
        define_settings! {
            @settings
            $(
                $(#[doc = $doc])+
                $field : $ty = $default,
                    arg $argty $([$($argattr)*])?, flag $flag, group $group, label $label,
                    control $control;
            )+
            $(
                $(#[doc = $fdoc])+
                $ffield : $fty = $fdefault,
                    arg $fargty $([$($fargattr)*])?, flag $fflag, group Finish, label $flabel,
                    control $fcontrol;
            )+
        }

        /// The settings of the finishing chain applied after the last loop: filter passes and
        /// enhancement factors (`imageops::finish` applies them in its own order).
        #[derive(Debug, Clone, Copy, PartialEq, Serialize)]
        pub struct Finishing {
            $( $(#[doc = $fdoc])+ pub $ffield: $fty, )+
        }

        impl Default for Finishing {
            /// The settings' defaults: no filter passes, no contour, factors of 1.0 (the
            /// identity).
            fn default() -> Self {
                Finishing { $( $ffield: $fdefault, )+ }
            }
        }

        impl Settings {
            /// The finishing-chain part of the settings.
            pub fn finishing(&self) -> Finishing {
                Finishing { $( $ffield: self.$ffield, )+ }
            }

            /// Sets the finishing-chain part of the settings to `finishing`.
            pub fn set_finishing(&mut self, finishing: &Finishing) {
                $( self.$ffield = finishing.$ffield; )+
            }
        }

        /// The finishing settings in A1111's infotext, in the order they are written there
        /// (`Add Detail, Add Blur, Smoothing, Contour, Sharpness, Brightness, Color Strength,
        /// Contrast`).
        pub static FINISHING_INFOTEXT: &[InfotextField<Finishing>] =
            &a1111::in_position_order([
                $(
                    InfotextField {
                        key: $fkey,
                        position: $fpos,
                        kind: <$fty as InfotextValue>::KIND,
                        write: |f: &Finishing| f.$ffield.to_infotext(),
                        read: |f: &mut Finishing, text: &str| match <$fty as InfotextValue>::from_infotext(text) {
                            Some(value) => {
                                f.$ffield = value;
                                true
                            }
                            None => false,
                        },
                    },
                )+
            ]);
    };

    (
        @settings
        $(
            $(#[doc = $doc:literal])+
            $field:ident : $ty:ty = $default:expr,
                arg $argty:ty $([$($argattr:tt)*])?, flag $flag:literal, group $group:ident, label $label:literal,
                control $control:expr;
        )+
    ) => {
        /// Every setting of a run, with the defaults of `docs/algorithm.md`.
        ///
        /// Missing keys in a settings file take their defaults; unknown keys are an error.
        #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
        #[serde(default, deny_unknown_fields)]
        pub struct Settings {
            $( $(#[doc = $doc])+ pub $field: $ty, )+
        }

        impl Default for Settings {
            fn default() -> Self {
                Settings { $( $field: $default, )+ }
            }
        }

        /// Metadata of every setting, in display order.
        pub static FIELDS: &[FieldDef] = &[
            $(
                FieldDef {
                    key: stringify!($field),
                    flag: $flag,
                    label: $label,
                    group: Group::$group,
                    help: concat!($($doc, "\n"),+),
                    control: $control,
                },
            )+
        ];

        /// Command-line flags for every setting; a flag that is given overrides the value from
        /// the defaults or the settings file.
        #[cfg(feature = "clap")]
        #[derive(Debug, Clone, Default, clap::Args)]
        pub struct SettingsArgs {
            $(
                $(#[doc = $doc])+
                #[arg(long = $flag, help_heading = Group::$group.heading() $(, $($argattr)*)?)]
                pub $field: Option<$argty>,
            )+
        }

        #[cfg(feature = "clap")]
        impl SettingsArgs {
            /// Writes every flag that was given into `settings`.
            fn apply_fields(&self, settings: &mut Settings) {
                $(
                    if let Some(value) = &self.$field {
                        settings.$field = value.clone().into();
                    }
                )+
            }
        }

        impl Settings {
            /// Checks every setting against its range; the error names the field, the value
            /// and what is allowed.
            pub fn validate(&self) -> Result<()> {
                $( self.$field.check(stringify!($field), &$control)?; )+
                Ok(())
            }
        }
    };
}

define_settings! {
    /// Number of img2img loops; each loop runs at a larger size than the one before.
    loops: u32 = 4,
        arg u32, flag "loops", group Loop, label "Loops",
        control Control::Int { min: 1, max: 32, step: 1 };
    /// Factor that multiplies the denoising strength after every loop (1 keeps it constant).
    denoise_change: f64 = 1.0,
        arg f64, flag "denoise-change", group Loop, label "Denoise change",
        control Control::Float { min: 0.9, max: 1.1, step: 0.01 };
    /// How the size grows from loop to loop: linear, adaptive (by image brightness) or an easing.
    curve: Curve = Curve::Linear,
        arg Curve, flag "curve", group Loop, label "Growth curve",
        control Control::Choice { options: field::options::<Curve> };
    /// For the adaptive curve: how strongly brightness scales each loop's growth.
    adaptive_factor: f64 = 1.0,
        arg f64, flag "adaptive-factor", group Loop, label "Adaptive factor",
        control Control::Float { min: 0.5, max: 2.0, step: 0.1 };
    /// Size of the first loop's input; unset: the input image's size rounded down to ×8.
    start_size: Option<Size> = None,
        arg Size, flag "start-size", group Size, label "Start size",
        control Control::Size { min: 64, max: 4096, multiple: 8 };
    /// Whether the final size is the largest fit inside the maximum size, or the start size
    /// times the scale.
    target_mode: TargetMode = TargetMode::MaxSize,
        arg TargetMode, flag "target-mode", group Size, label "Target",
        control Control::Choice { options: field::options::<TargetMode> };
    /// Maximum width of the final image (max-size target).
    max_width: u32 = 1024,
        arg u32, flag "max-width", group Size, label "Max width",
        control Control::Int { min: 512, max: 4096, step: 64 };
    /// Maximum height of the final image (max-size target).
    max_height: u32 = 1024,
        arg u32, flag "max-height", group Size, label "Max height",
        control Control::Int { min: 512, max: 4096, step: 64 };
    /// Final size as a multiple of the start size (scale target).
    scale: f64 = 2.0,
        arg f64, flag "scale", group Size, label "Scale",
        control Control::Float { min: 0.5, max: 4.0, step: 0.1 };
    /// Tiled diffusion (MultiDiffusion): a loop denoises overlapping tiles and blends them.
    /// Auto: for loops past 1.5 × the model's native size.
    tile: Tiling = Tiling::Auto,
        arg Tiling, flag "tile", group Size, label "Tiled diffusion",
        control Control::Choice { options: field::options::<Tiling> };
    /// Tile side in pixels (multiple of 8); 0: the model's native size (512 for SD 1.5).
    tile_size: u32 = 0,
        arg u32, flag "tile-size", group Size, label "Tile size",
        control Control::Int { min: 0, max: 2048, step: 64 };
    /// How much neighbouring tiles overlap, in pixels (multiple of 8; blended over it).
    tile_overlap: u32 = 128,
        arg u32, flag "tile-overlap", group Size, label "Tile overlap",
        control Control::Int { min: 16, max: 512, step: 16 };
    /// What the image should show; an empty prompt gives chaotic results.
    prompt: String = String::new(),
        arg String, flag "prompt", group Img2img, label "Prompt",
        control Control::Text { multiline: true };
    /// What the image should not show.
    negative_prompt: String = String::new(),
        arg String, flag "negative-prompt", group Img2img, label "Negative prompt",
        control Control::Text { multiline: true };
    /// The diffusion sampler.
    sampler: Sampler = Sampler::Ddim,
        arg Sampler, flag "sampler", group Img2img, label "Sampler",
        control Control::Choice { options: field::options::<Sampler> };
    /// The noise schedule the sampler steps through (A1111's "Schedule type"; automatic: the
    /// one A1111 names for the sampler).
    schedule: ScheduleType = ScheduleType::Automatic,
        arg ScheduleType, flag "schedule", group Img2img, label "Schedule type",
        control Control::Choice { options: field::options::<ScheduleType> };
    /// Scheduled sampling steps; a loop runs the last `steps × denoise` of them.
    steps: u32 = 30,
        arg u32, flag "steps", group Img2img, label "Steps",
        control Control::Int { min: 1, max: 150, step: 1 };
    /// Classifier-free guidance scale: how strongly the prompt steers (1 disables guidance).
    cfg: f64 = 7.0,
        arg f64, flag "cfg", group Img2img, label "CFG scale",
        control Control::Float { min: 1.0, max: 30.0, step: 0.5 };
    /// Denoising strength of the first loop: how much each loop may change the image.
    denoise: f64 = 0.35,
        arg f64, flag "denoise", group Img2img, label "Denoising strength",
        control Control::Float { min: 0.0, max: 1.0, step: 0.01 };
    /// Seed of the first loop (loop k uses seed + k − 1); −1 draws one at random per run.
    seed: i64 = -1,
        arg i64 [allow_negative_numbers = true], flag "seed", group Img2img, label "Seed",
        control Control::Int { min: -1, max: MAX_SEED, step: 1 };
    /// A1111's "Clip skip": condition on the text encoder's hidden states this many layers
    /// from the end (1 = the last layer; 2 suits most anime models). SD 1.x/2.x only: SDXL
    /// ignores it, as A1111 does.
    clip_skip: u32 = 1,
        arg u32 [value_parser = clap::value_parser!(u32).range(1..=12)], flag "clip-skip", group Img2img, label "Clip skip",
        control Control::Int { min: 1, max: 12, step: 1 };
    /// A1111's "Pad prompt/negative prompt to be same length": when the prompt and the negative
    /// prompt have different numbers of 75-token chunks, pad the shorter with empty-prompt
    /// chunks (one UNet pass for both) instead of running the UNet on each (A1111's default).
    pad_conds: bool = false,
        arg bool [num_args = 0..=1, require_equals = true, default_missing_value = "true"], flag "pad-conds", group Img2img, label "Pad prompts to the same length",
        control Control::Toggle;
    /// How the image is fitted to each loop's size when the aspect ratio differs.
    resize_mode: ResizeMode = ResizeMode::CropAndResize,
        arg ResizeMode, flag "resize-mode", group Img2img, label "Resize mode",
        control Control::Choice { options: field::options::<ResizeMode> };
    /// Match each loop's colours to the original input image (A1111's colour correction).
    color_correction: bool = false,
        arg bool [num_args = 0..=1, require_equals = true, default_missing_value = "true"], flag "color-correction", group Img2img, label "Colour correction",
        control Control::Toggle;
    /// A ControlNet that guides every loop with the loop's own input (e.g. ControlNet Tile,
    /// `control_v11f1e_sd15_tile`): a file or diffusers folder, or its name in
    /// `models/ControlNet/`. Empty: none.
    controlnet: String = String::new(),
        arg String, flag "controlnet", group ControlNet, label "ControlNet model",
        control Control::Text { multiline: false };
    /// How strongly the ControlNet steers (its residuals' multiplier).
    control_weight: f64 = 1.0,
        arg f64, flag "control-weight", group ControlNet, label "Control weight",
        control Control::Float { min: 0.0, max: 2.0, step: 0.05 };
    /// The fraction of a loop's steps at which the ControlNet starts steering.
    control_start: f64 = 0.0,
        arg f64, flag "control-start", group ControlNet, label "Starting control step",
        control Control::Float { min: 0.0, max: 1.0, step: 0.01 };
    /// The fraction of a loop's steps at which the ControlNet stops steering.
    control_end: f64 = 1.0,
        arg f64, flag "control-end", group ControlNet, label "Ending control step",
        control Control::Float { min: 0.0, max: 1.0, step: 0.01 };
    /// Balanced, or the prompt or the ControlNet more important (as the A1111 extension).
    control_mode: ControlMode = ControlMode::Balanced,
        arg ControlMode, flag "control-mode", group ControlNet, label "Control mode",
        control Control::Choice { options: field::options::<ControlMode> };
    /// The control image: the loop's input as it is, or the tile preprocessor's resample.
    control_preprocess: ControlPreprocess = ControlPreprocess::None,
        arg ControlPreprocess, flag "control-preprocess", group ControlNet, label "Preprocessor",
        control Control::Choice { options: field::options::<ControlPreprocess> };
    /// tile-resample's down-sampling rate: the control image is the input shrunk this many
    /// times and brought back (1: unchanged; higher: blurrier, more freedom).
    control_resample_rate: f64 = 1.0,
        arg f64, flag "control-resample-rate", group ControlNet, label "Down sampling rate",
        control Control::Float { min: 1.0, max: 8.0, step: 0.1 };
    // The finishing chain (group Finish): each setting's A1111 infotext key, and its place
    // among these keys in the infotext.
    finishing {
        /// Passes of Pillow's DETAIL filter on the final image.
        detail: FilterLevel = FilterLevel::None,
            arg FilterLevel, flag "detail", label "Detail",
            control Control::Choice { options: field::options::<FilterLevel> },
            infotext "Add Detail" at 0;
        /// Passes of Pillow's SMOOTH filter on the final image.
        smooth: FilterLevel = FilterLevel::None,
            arg FilterLevel, flag "smooth", label "Smooth",
            control Control::Choice { options: field::options::<FilterLevel> },
            infotext "Smoothing" at 2;
        /// Passes of Pillow's BLUR filter on the final image.
        blur: FilterLevel = FilterLevel::None,
            arg FilterLevel, flag "blur", label "Blur",
            control Control::Choice { options: field::options::<FilterLevel> },
            infotext "Add Blur" at 1;
        /// Apply Pillow's CONTOUR filter last.
        contour: bool = false,
            arg bool [num_args = 0..=1, require_equals = true, default_missing_value = "true"], flag "contour", label "Contour",
            control Control::Toggle,
            infotext "Contour" at 3;
        /// Pillow ImageEnhance Sharpness factor (1 = unchanged).
        sharpness: f64 = 1.0,
            arg f64, flag "sharpness", label "Sharpness",
            control Control::Float { min: 0.1, max: 2.0, step: 0.01 },
            infotext "Sharpness" at 4;
        /// Pillow ImageEnhance Brightness factor (1 = unchanged).
        brightness: f64 = 1.0,
            arg f64, flag "brightness", label "Brightness",
            control Control::Float { min: 0.1, max: 2.0, step: 0.01 },
            infotext "Brightness" at 5;
        /// Pillow ImageEnhance Color (saturation) factor (1 = unchanged).
        color: f64 = 1.0,
            arg f64, flag "color", label "Colour",
            control Control::Float { min: 0.1, max: 2.0, step: 0.01 },
            infotext "Color Strength" at 6;
        /// Pillow ImageEnhance Contrast factor (1 = unchanged).
        contrast: f64 = 1.0,
            arg f64, flag "contrast", label "Contrast",
            control Control::Float { min: 0.1, max: 2.0, step: 0.01 },
            infotext "Contrast" at 7;
    }
}

impl Finishing {
    /// The settings as A1111 infotext `(key, value)` pairs, in the infotext's order
    /// ([`FINISHING_INFOTEXT`]).
    pub fn infotext_pairs(&self) -> Vec<(&'static str, String)> {
        FINISHING_INFOTEXT
            .iter()
            .map(|field| (field.key, (field.write)(self)))
            .collect()
    }
}

#[cfg(feature = "clap")]
impl SettingsArgs {
    /// Writes every flag that was given into `settings`. Giving `--scale` (or a maximum size)
    /// without `--target-mode` also selects the matching target mode.
    pub fn apply(&self, settings: &mut Settings) {
        self.apply_fields(settings);
        if self.target_mode.is_none() {
            if self.scale.is_some() {
                settings.target_mode = TargetMode::Scale;
            } else if self.max_width.is_some() || self.max_height.is_some() {
                settings.target_mode = TargetMode::MaxSize;
            }
        }
    }
}

impl Settings {
    /// Reads a settings file (JSON; missing keys keep their defaults) and validates it.
    pub fn from_json_file(path: &Path) -> Result<Settings> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::input(path, format!("cannot read settings file: {e}")))?;
        let settings: Settings = serde_json::from_str(&text)
            .map_err(|e| Error::input(path, format!("not a valid settings file: {e}")))?;
        settings
            .validate()
            .map_err(|e| Error::input(path, e.to_string()))?;
        Ok(settings)
    }

    /// The settings as pretty JSON, as read by [`Settings::from_json_file`].
    pub fn to_json_pretty(&self) -> String {
        // Serialising plain data with string keys cannot fail.
        serde_json::to_string_pretty(self).unwrap_or_default()
    }

    /// Warnings worth showing the user that do not stop a run (e.g. an empty prompt).
    pub fn warnings(&self) -> Vec<String> {
        let mut warnings = Vec::new();
        if self.prompt.trim().is_empty() {
            warnings.push(
                "the prompt is empty: results are usually poor (upstream calls it chaos)".into(),
            );
        }
        if self.sampler == Sampler::Lcm && (self.steps > 8 || self.cfg > 2.0) {
            warnings.push(format!(
                "LCM is made for 4-8 steps and CFG 1-2 (with an LCM-LoRA or an LCM model); \
                 {} steps at CFG {} will look burnt",
                self.steps, self.cfg
            ));
        }
        warnings
    }

    /// Looks up the metadata of the setting `key`.
    pub fn field(key: &str) -> Option<&'static FieldDef> {
        FIELDS.iter().find(|f| f.key == key)
    }
}

// The tests parse flags, so they need the `clap` feature (on in the workspace build).
#[cfg(all(test, feature = "clap"))]
mod tests;
