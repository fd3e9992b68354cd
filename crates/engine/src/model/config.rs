//! The `config.json` files of a diffusers folder, read into the engine's model configs.
//!
//! Architecture, latent scale and text-encoder shape all come from the files, never from
//! presets, so SD 1.x, SD 2.x, fine-tunes and tiny test models load through one path.
//! SDXL folders (a second text encoder in `text_encoder_2/`, the UNet's `"text_time"` added
//! conditioning) load through the same path. Features the engine does not implement (class
//! embeddings, other added conditionings, …) are refused with a message naming the file and
//! the key.

use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde::de::DeserializeOwned;

use loopback_core::{Error, Result};

/// Reads and parses a JSON config, naming the file on error.
pub fn read_json<T: DeserializeOwned>(path: &Path) -> Result<T> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        Error::input(
            path,
            match e.kind() {
                std::io::ErrorKind::NotFound => "missing (not a diffusers model folder?)".into(),
                _ => format!("cannot read: {e}"),
            },
        )
    })?;
    serde_json::from_str(&text).map_err(|e| Error::input(path, format!("invalid config: {e}")))
}

/// A value that diffusers writes either once for all blocks or once per block.
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(untagged)]
pub enum PerBlock {
    /// One value for every block.
    One(usize),
    /// One value per block.
    Each(Vec<usize>),
}

impl PerBlock {
    fn get(&self, i: usize) -> Option<usize> {
        match self {
            PerBlock::One(v) => Some(*v),
            PerBlock::Each(v) => v.get(i).copied(),
        }
    }
}

/// `unet/config.json` (the keys the engine uses).
#[derive(Debug, Clone, Deserialize)]
pub struct UNetFile {
    /// Latent channels in.
    #[serde(default = "four")]
    pub in_channels: usize,
    /// Latent channels out.
    #[serde(default = "four")]
    pub out_channels: usize,
    /// Channels of each resolution level.
    pub block_out_channels: Vec<usize>,
    /// Down block class names.
    pub down_block_types: Vec<String>,
    /// Up block class names.
    pub up_block_types: Vec<String>,
    /// Resnets per block.
    #[serde(default = "two")]
    pub layers_per_block: usize,
    /// Attention heads per block (diffusers' historical name).
    #[serde(default)]
    pub attention_head_dim: Option<PerBlock>,
    /// Attention heads per block (newer name; wins over `attention_head_dim`).
    #[serde(default)]
    pub num_attention_heads: Option<PerBlock>,
    /// Transformer layers per cross-attention block.
    #[serde(default)]
    pub transformer_layers_per_block: Option<PerBlock>,
    /// Width of the text embeddings.
    pub cross_attention_dim: usize,
    /// GroupNorm groups.
    #[serde(default = "thirty_two")]
    pub norm_num_groups: usize,
    /// GroupNorm epsilon.
    #[serde(default = "norm_eps")]
    pub norm_eps: f64,
    /// Linear instead of 1×1-conv projections in the transformers (SD 2.x).
    #[serde(default)]
    pub use_linear_projection: bool,
    /// Sinusoidal embedding layout.
    #[serde(default = "yes")]
    pub flip_sin_to_cos: bool,
    /// Sinusoidal embedding shift.
    #[serde(default)]
    pub freq_shift: f64,
    /// Centre the input (`2x − 1`).
    #[serde(default)]
    pub center_input_sample: bool,
    /// Downsampling padding.
    #[serde(default = "one")]
    pub downsample_padding: usize,
    /// Mid-block output scale.
    #[serde(default = "one_f")]
    pub mid_block_scale_factor: f64,
    /// Added conditioning: `"text_time"` (SDXL: pooled text embedding + size/crop ids) or
    /// none; other kinds are refused.
    #[serde(default)]
    pub addition_embed_type: Option<String>,
    /// Width of the sinusoidal embedding of each SDXL time id (256 in SDXL).
    #[serde(default)]
    pub addition_time_embed_dim: Option<usize>,
    /// Input width of the added embedding: pooled text width + 6 × `addition_time_embed_dim`
    /// (2816 in SDXL base).
    #[serde(default)]
    pub projection_class_embeddings_input_dim: Option<usize>,
    /// Class-conditional models (not supported).
    #[serde(default)]
    pub class_embed_type: Option<String>,
    /// LCM-style guidance embedding (not supported).
    #[serde(default)]
    pub time_cond_proj_dim: Option<usize>,
    /// Mid-block class (only the cross-attention one is supported).
    #[serde(default)]
    pub mid_block_type: Option<String>,
    /// Default image size in latents.
    #[serde(default)]
    pub sample_size: Option<usize>,
}

fn one() -> usize {
    1
}
fn two() -> usize {
    2
}
fn four() -> usize {
    4
}
fn thirty_two() -> usize {
    32
}
fn norm_eps() -> f64 {
    1e-5
}
fn one_f() -> f64 {
    1.0
}
fn yes() -> bool {
    true
}

/// SDXL's `"text_time"` added conditioning: the sinusoidal embeddings of the time ids
/// (original size, crop corner, target size), concatenated after the pooled text embedding,
/// through a two-layer MLP added to the time embedding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TextTime {
    /// Sinusoidal width per time id (`addition_time_embed_dim`).
    pub time_embed_dim: usize,
    /// Input width of the MLP (`projection_class_embeddings_input_dim`).
    pub input_dim: usize,
}

/// One resolution level of the UNet, as the config describes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Level {
    /// Channels of the level.
    pub channels: usize,
    /// Whether the level's blocks have cross-attention transformers.
    pub attention: bool,
    /// Transformer layers of each attention block (the last level's value is the mid
    /// block's, whether or not the level itself has attention).
    pub transformer_layers: usize,
    /// Attention heads of the level's transformers.
    pub heads: usize,
}

impl UNetFile {
    /// The resolution levels (down path order), or an error naming `path` and the
    /// unsupported or inconsistent key.
    pub fn levels(&self, path: &Path) -> Result<Vec<Level>> {
        let unsupported = |key: &str, what: &str| {
            Err(Error::input(
                path,
                format!("{key}: {what} is not supported yet"),
            ))
        };
        self.text_time(path)?;
        if let Some(kind) = &self.class_embed_type {
            return unsupported("class_embed_type", kind);
        }
        if self.time_cond_proj_dim.is_some() {
            return unsupported("time_cond_proj_dim", "guidance embedding");
        }
        if let Some(mid) = &self.mid_block_type
            && mid != "UNetMidBlock2DCrossAttn"
        {
            return unsupported("mid_block_type", mid);
        }
        if self.norm_num_groups == 0
            || self
                .block_out_channels
                .iter()
                .any(|c| c % self.norm_num_groups != 0)
        {
            return Err(Error::input(
                path,
                format!(
                    "norm_num_groups {} does not divide every block_out_channels value",
                    self.norm_num_groups
                ),
            ));
        }
        let n = self.block_out_channels.len();
        if self.down_block_types.len() != n || self.up_block_types.len() != n || n == 0 {
            return Err(Error::input(
                path,
                "block_out_channels, down_block_types and up_block_types differ in length",
            ));
        }
        let heads = self
            .num_attention_heads
            .clone()
            .or_else(|| self.attention_head_dim.clone())
            .unwrap_or(PerBlock::One(8));
        let layers = self
            .transformer_layers_per_block
            .clone()
            .unwrap_or(PerBlock::One(1));
        let mut blocks = Vec::with_capacity(n);
        for (i, (&out_channels, kind)) in self
            .block_out_channels
            .iter()
            .zip(&self.down_block_types)
            .enumerate()
        {
            let cross = match kind.as_str() {
                "CrossAttnDownBlock2D" => true,
                "DownBlock2D" => false,
                other => return unsupported("down_block_types", other),
            };
            let up = &self.up_block_types[n - 1 - i];
            let up_cross = match up.as_str() {
                "CrossAttnUpBlock2D" => true,
                "UpBlock2D" => false,
                other => return unsupported("up_block_types", other),
            };
            if up_cross != cross {
                return unsupported(
                    "up_block_types",
                    "up blocks that do not mirror the down blocks",
                );
            }
            let missing =
                |key: &str| Error::input(path, format!("{key} has no value for block {i}"));
            let heads = heads.get(i).ok_or_else(|| missing("attention_head_dim"))?;
            if heads == 0 || out_channels % heads != 0 {
                return Err(Error::input(
                    path,
                    format!("{heads} attention heads do not divide {out_channels} channels"),
                ));
            }
            blocks.push(Level {
                channels: out_channels,
                attention: cross,
                transformer_layers: layers
                    .get(i)
                    .ok_or_else(|| missing("transformer_layers_per_block"))?,
                heads,
            });
        }
        Ok(blocks)
    }

    /// The added conditioning: `Some` for SDXL's `"text_time"`, `None` without one; other
    /// kinds and missing widths are errors naming `path`.
    pub fn text_time(&self, path: &Path) -> Result<Option<TextTime>> {
        match self.addition_embed_type.as_deref() {
            None => Ok(None),
            Some("text_time") => {
                let need = |key: &str, v: Option<usize>| {
                    v.filter(|&v| v > 0).ok_or_else(|| {
                        Error::input(
                            path,
                            format!("addition_embed_type \"text_time\" needs {key}"),
                        )
                    })
                };
                let time_embed_dim = need("addition_time_embed_dim", self.addition_time_embed_dim)?;
                let input_dim = need(
                    "projection_class_embeddings_input_dim",
                    self.projection_class_embeddings_input_dim,
                )?;
                if input_dim <= 6 * time_embed_dim {
                    return Err(Error::input(
                        path,
                        format!(
                            "projection_class_embeddings_input_dim {input_dim} leaves no room for \
                             the pooled text embedding after 6 time ids of {time_embed_dim}"
                        ),
                    ));
                }
                Ok(Some(TextTime {
                    time_embed_dim,
                    input_dim,
                }))
            }
            Some(other) => Err(Error::input(
                path,
                format!("addition_embed_type: {other:?} is not supported"),
            )),
        }
    }
}

/// `vae/config.json` (the keys the engine uses).
#[derive(Debug, Clone, Deserialize)]
pub struct VaeFile {
    /// Image channels in.
    #[serde(default = "three")]
    pub in_channels: usize,
    /// Image channels out.
    #[serde(default = "three")]
    pub out_channels: usize,
    /// Channels of each level.
    pub block_out_channels: Vec<usize>,
    /// Resnets per level.
    #[serde(default = "one")]
    pub layers_per_block: usize,
    /// Latent channels.
    #[serde(default = "four")]
    pub latent_channels: usize,
    /// GroupNorm groups.
    #[serde(default = "thirty_two")]
    pub norm_num_groups: usize,
    /// Latents are multiplied by this after encoding (0.18215 for SD 1.x/2.x, 0.13025 for XL).
    #[serde(default = "sd_scale")]
    pub scaling_factor: f64,
    /// Latent shift (SD3-style; must be absent or 0).
    #[serde(default)]
    pub shift_factor: Option<f64>,
    /// 1×1 conv after the encoder.
    #[serde(default = "yes")]
    pub use_quant_conv: bool,
    /// 1×1 conv before the decoder.
    #[serde(default = "yes")]
    pub use_post_quant_conv: bool,
    /// Attention in the mid block.
    #[serde(default = "yes")]
    pub mid_block_add_attention: bool,
    /// The VAE overflows in f16 and must run in f32 (diffusers' default true; SDXL's
    /// fp16-fix VAE says false).
    #[serde(default = "yes")]
    pub force_upcast: bool,
}

fn three() -> usize {
    3
}
fn sd_scale() -> f64 {
    0.18215
}

impl VaeFile {
    /// Checks the features the engine's VAE implements.
    pub fn check(&self, path: &Path) -> Result<()> {
        if self.shift_factor.is_some_and(|s| s != 0.0) {
            return Err(Error::input(
                path,
                "shift_factor: shifted latents are not supported",
            ));
        }
        if !self.mid_block_add_attention {
            return Err(Error::input(
                path,
                "mid_block_add_attention = false is not supported",
            ));
        }
        if self.block_out_channels.is_empty() {
            return Err(Error::input(path, "block_out_channels is empty"));
        }
        Ok(())
    }

    /// How many pixels one latent covers per side.
    pub fn downscale(&self) -> usize {
        1 << (self.block_out_channels.len() - 1)
    }
}

/// `text_encoder/config.json` (CLIP text model).
#[derive(Debug, Clone, Deserialize)]
pub struct ClipFile {
    /// Vocabulary size.
    pub vocab_size: usize,
    /// Embedding width.
    pub hidden_size: usize,
    /// MLP width.
    pub intermediate_size: usize,
    /// Transformer layers.
    pub num_hidden_layers: usize,
    /// Attention heads.
    pub num_attention_heads: usize,
    /// Sequence length (77).
    #[serde(default = "seventy_seven")]
    pub max_position_embeddings: usize,
    /// `quick_gelu` (OpenAI CLIP) or `gelu` (OpenCLIP).
    #[serde(default = "quick_gelu")]
    pub hidden_act: String,
    /// LayerNorm epsilon.
    #[serde(default = "norm_eps")]
    pub layer_norm_eps: f64,
    /// End-of-text token id.
    #[serde(default = "eos")]
    pub eos_token_id: u32,
    /// Width of the text projection (`CLIPTextModelWithProjection`, SDXL's second encoder).
    #[serde(default)]
    pub projection_dim: Option<usize>,
}

fn seventy_seven() -> usize {
    77
}
fn quick_gelu() -> String {
    "quick_gelu".into()
}
fn eos() -> u32 {
    49407
}

/// The config files of a diffusers model folder.
#[derive(Debug, Clone)]
pub struct ModelFiles {
    /// The folder.
    pub root: PathBuf,
    /// UNet config.
    pub unet: UNetFile,
    /// VAE config.
    pub vae: VaeFile,
    /// Text encoder config.
    pub clip: ClipFile,
    /// Second text encoder config (`text_encoder_2/`, SDXL's OpenCLIP ViT-bigG with its text
    /// projection); `None` for SD 1.x/2.x.
    pub clip2: Option<ClipFile>,
}

impl ModelFiles {
    /// Reads every config of the diffusers folder `root`.
    pub fn read(root: &Path) -> Result<Self> {
        if !root.is_dir() {
            return Err(Error::input(
                root,
                "not a folder (expected a diffusers model folder)",
            ));
        }
        let unet: UNetFile = read_json(&root.join("unet/config.json"))?;
        let vae: VaeFile = read_json(&root.join("vae/config.json"))?;
        vae.check(&root.join("vae/config.json"))?;
        let clip: ClipFile = read_json(&root.join("text_encoder/config.json"))?;
        let clip2_path = root.join("text_encoder_2/config.json");
        let clip2: Option<ClipFile> = if clip2_path.is_file() {
            Some(read_json(&clip2_path)?)
        } else {
            None
        };
        let files = ModelFiles {
            root: root.to_path_buf(),
            unet,
            vae,
            clip,
            clip2,
        };
        files.check_text_widths(root)?;
        Ok(files)
    }

    /// Checks that the text encoders fit the UNet: the width of the (concatenated) hidden
    /// states equals `cross_attention_dim`, and with SDXL's added conditioning the second
    /// encoder's projection fills what the 6 time ids leave of the added embedding's input.
    pub fn check_text_widths(&self, root: &Path) -> Result<()> {
        let unet_config = root.join("unet/config.json");
        let width = self.clip.hidden_size + self.clip2.as_ref().map_or(0, |c| c.hidden_size);
        if width != self.unet.cross_attention_dim {
            let what = if self.clip2.is_some() {
                "the two text encoders' widths together"
            } else {
                "text encoder width"
            };
            return Err(Error::input(
                root,
                format!(
                    "{what} {width} does not match the UNet's cross_attention_dim {}",
                    self.unet.cross_attention_dim
                ),
            ));
        }
        match (self.unet.text_time(&unet_config)?, &self.clip2) {
            (None, _) => Ok(()),
            (Some(_), None) => Err(Error::input(
                root,
                "the UNet expects SDXL's pooled text embedding, but there is no text_encoder_2",
            )),
            (Some(tt), Some(clip2)) => {
                let pooled = clip2.projection_dim.unwrap_or(clip2.hidden_size);
                if pooled + 6 * tt.time_embed_dim != tt.input_dim {
                    return Err(Error::input(
                        &unet_config,
                        format!(
                            "projection_class_embeddings_input_dim {} is not the pooled text \
                             width {pooled} + 6 × addition_time_embed_dim {} (a refiner with \
                             an aesthetic score is not supported)",
                            tt.input_dim, tt.time_embed_dim
                        ),
                    ));
                }
                Ok(())
            }
        }
    }
}
