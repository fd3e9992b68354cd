//! A Stable Diffusion model loaded from a diffusers folder: text encoder(s), VAE and UNet
//! (SD 1.x, 2.x and SDXL, whose second text encoder is in `text_encoder_2/`).
//!
//! Weights are memory-mapped safetensors, cast to the requested dtype as they load. The
//! architecture comes from each component's `config.json` ([`config`]).

pub mod arch;
pub mod clip;
pub mod config;
pub mod controlnet;
pub mod taesd;
pub mod text;
pub mod unet;
pub mod vae;

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;

use crate::error::{candle_msg, engine_err};
use crate::kernels::compute::Compute;
use crate::load::checkpoint::LdmUnetLayout;
use crate::load::lora::names::same_layout;
use crate::load::lora::{Component as LoraPart, LoraSet};
use crate::load::weights::{SafetensorsFile, WeightSource};
use clip::ClipText;
use config::ModelFiles;
use loopback_core::{Error, Result};
use text::{EncoderChunk, TextEncoders};
use unet::UNet;
use vae::Vae;

/// A loaded model.
#[derive(Debug)]
pub struct SdModel {
    /// The configs it was built from.
    pub files: ModelFiles,
    /// The text encoder and SDXL's second one (OpenCLIP ViT-bigG with its text projection),
    /// with a cache of their outputs; releasable ([`text`]).
    pub text_encoders: TextEncoders,
    /// The VAE.
    pub vae: Vae,
    /// The denoising UNet.
    pub unet: UNet,
    /// Where the weights live.
    pub device: Device,
    /// The activations' dtype, and the weights' except where `compute` holds them in bf16
    /// (the CPU then computes on f32 tensors).
    pub dtype: DType,
    /// The arithmetic of the networks' CPU products (text encoders, VAE and UNet): bf16
    /// weights when the model was loaded for bf16 on the CPU (held only in bf16, their
    /// activations f32, the CPU kernels' format; bf16 products where the CPU has bf16
    /// instructions, f32 ones on widened weights where it has none), f32 otherwise.
    pub compute: Compute,
    /// The VAE's dtype: `dtype`, except f32 for an SDXL VAE whose config asks for
    /// `force_upcast` when `dtype` is f16 (the stock SDXL VAE overflows in f16; the
    /// `madebyollin/sdxl-vae-fp16-fix` VAE does not and stays in f16).
    pub vae_dtype: DType,
}

/// The weights file of a component: the fp16 variant first when loading f16, the full one
/// otherwise, falling back to whichever exists.
fn weights_file(dir: &Path, stem: &str, dtype: DType) -> Result<PathBuf> {
    let full = dir.join(format!("{stem}.safetensors"));
    let half = dir.join(format!("{stem}.fp16.safetensors"));
    let order = if dtype == DType::F16 {
        [&half, &full]
    } else {
        [&full, &half]
    };
    if let Some(found) = order.into_iter().find(|p| p.is_file()) {
        return Ok(found.clone());
    }
    if dir.join(format!("{stem}.bin")).is_file() {
        return Err(Error::input(
            dir,
            format!("only {stem}.bin (PyTorch pickle) found; convert it to .safetensors"),
        ));
    }
    Err(Error::input(dir, format!("no {stem}.safetensors weights")))
}

/// The weights of one network and the file they come from (named in errors).
pub struct Component {
    /// The network's tensors.
    pub weights: VarBuilder<'static>,
    /// The (diffusers-layout) names `weights` serves, which LoRA modules are matched to.
    pub names: Vec<String>,
    /// The file, for error messages.
    pub path: PathBuf,
}

impl std::fmt::Debug for Component {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Component")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

/// The weights of a model's networks.
#[derive(Debug)]
pub struct ModelWeights {
    /// The text encoder.
    pub clip: Component,
    /// SDXL's second text encoder (OpenCLIP-G with its projection).
    pub clip2: Option<Component>,
    /// The VAE.
    pub vae: Component,
    /// The UNet.
    pub unet: Component,
}

/// The configs and weights of the diffusers folder `root`, not yet built into networks.
pub fn folder_parts(
    root: &Path,
    device: &Device,
    dtype: DType,
) -> Result<(ModelFiles, ModelWeights)> {
    let files = ModelFiles::read(root)?;
    let component = |dir: &str, stem: &str, dtype: DType| -> Result<Component> {
        let path = weights_file(&root.join(dir), stem, dtype)?;
        // One header read serves both the names (for LoRA matching) and the weights.
        let file = std::sync::Arc::new(SafetensorsFile::open(&path)?);
        let names = file.names();
        Ok(Component {
            weights: WeightSource::identity(file).into_var_builder(dtype, device),
            names,
            path,
        })
    };
    let vae_dtype = vae_dtype(&files, dtype);
    let weights = ModelWeights {
        clip: component("text_encoder", "model", dtype)?,
        clip2: match &files.clip2 {
            Some(_) => Some(component("text_encoder_2", "model", dtype)?),
            None => None,
        },
        vae: component("vae", "diffusion_pytorch_model", vae_dtype)?,
        unet: component("unet", "diffusion_pytorch_model", dtype)?,
    };
    Ok((files, weights))
}

/// The dtype the VAE of `files` runs in under weights in `dtype`: SDXL's stock VAE overflows
/// in f16 (its config's `force_upcast`), so it runs in f32 under f16 weights; the fp16-fix
/// VAE (`force_upcast: false`) and every SD 1.x/2.x VAE run in `dtype`.
pub fn vae_dtype(files: &ModelFiles, dtype: DType) -> DType {
    if dtype == DType::F16 && files.clip2.is_some() && files.vae.force_upcast {
        DType::F32
    } else {
        dtype
    }
}

impl SdModel {
    /// Loads the diffusers folder `root` onto `device` with weights in `dtype`.
    pub fn load(root: &Path, device: &Device, dtype: DType) -> Result<Self> {
        Self::load_with_loras(root, device, dtype, &LoraSet::default())
    }

    /// Like [`SdModel::load`], with `loras` merged into the text encoders' and the UNet's
    /// weights as they load.
    pub fn load_with_loras(
        root: &Path,
        device: &Device,
        dtype: DType,
        loras: &LoraSet,
    ) -> Result<Self> {
        let (files, weights) = folder_parts(root, device, dtype)?;
        let unet_config = root.join("unet/config.json");
        Self::from_parts(files, weights, &unet_config, device, dtype, loras)
    }

    /// Builds the networks from `files` and `weights` (a diffusers folder's, a single-file
    /// checkpoint's, or either with a replacement VAE), with `loras` merged into the text
    /// encoders' and the UNet's weights (an SDXL UNet matches LoRA modules by its original SGM
    /// names as well as its diffusers ones). `unet_config` is the file named when the UNet
    /// config is not supported.
    pub fn from_parts(
        files: ModelFiles,
        weights: ModelWeights,
        unet_config: &Path,
        device: &Device,
        dtype: DType,
        loras: &LoraSet,
    ) -> Result<Self> {
        let mut parts = vec![LoraPart::Unet, LoraPart::TextEncoder];
        if weights.clip2.is_some() && files.clip2.is_some() {
            parts.push(LoraPart::TextEncoder2);
        }
        loras.check_components(&parts)?;
        // bf16 on the CPU: f32 activations and bf16 weights in every network (the weights
        // load as f32 and are rounded as each layer is built; see `Compute::for_weights`).
        let (compute, dtype) = Compute::for_weights(device, dtype);
        let ModelWeights {
            mut clip,
            mut clip2,
            mut vae,
            mut unet,
        } = weights;
        if compute.bf16_weights() {
            for part in [&mut clip, &mut vae, &mut unet]
                .into_iter()
                .chain(clip2.as_mut())
            {
                part.weights = part.weights.clone().set_dtype(dtype);
            }
        }
        let clip_weights = loras.wrap(
            LoraPart::TextEncoder,
            clip.weights,
            clip.names.iter().map(String::as_str),
            &same_layout,
        )?;
        let clip = ClipText::with_compute(clip_weights, &files.clip, compute).map_err(|e| {
            Error::input(
                &clip.path,
                format!("not a matching CLIP text encoder: {}", candle_msg(&e)),
            )
        })?;
        let clip2 = match (clip2, &files.clip2) {
            (Some(mut part), Some(cfg)) => {
                part.weights = loras.wrap(
                    LoraPart::TextEncoder2,
                    part.weights,
                    part.names.iter().map(String::as_str),
                    &same_layout,
                )?;
                Some(build_clip2(part, cfg, compute)?)
            }
            _ => None,
        };
        let vae_dtype = vae.weights.dtype();
        let vae = Vae::with_compute(vae.weights, &files.vae, compute).map_err(|e| {
            Error::input(&vae.path, format!("not a matching VAE: {}", candle_msg(&e)))
        })?;
        let unet_path = unet.path;
        // SDXL LoRAs name the UNet in the original SGM layout (kohya) or in diffusers' one.
        let sgm = files.clip2.is_some().then_some(LdmUnetLayout {
            levels: files.unet.block_out_channels.len(),
            layers_per_block: files.unet.layers_per_block,
        });
        let unet_weights = loras.wrap_unet(unet.weights, &unet.names, sgm)?;
        let unet = UNet::with_compute(unet_weights, &files.unet, unet_config, compute);
        let unet = unet.map_err(|e| match e {
            Error::Input { reason, .. } => Error::input(&unet_path, reason),
            other => other,
        })?;

        Ok(SdModel {
            files,
            text_encoders: TextEncoders::new(clip, clip2),
            vae,
            unet,
            device: device.clone(),
            dtype,
            compute,
            vae_dtype,
        })
    }

    /// The precision its networks run in: `bf16` for bf16 weights on the CPU, else its dtype
    /// (`f32`, `f16`, `bf16`).
    pub fn precision_label(&self) -> &'static str {
        match (self.compute, self.dtype) {
            (Compute::Bf16 | Compute::Bf16Weights, _) | (_, DType::BF16) => "bf16",
            (_, DType::F16) => "f16",
            _ => "f32",
        }
    }

    /// The size in pixels the model was trained at: the UNet's `sample_size` (64 when the
    /// config has none) times the VAE's downscale (512 for SD 1.5, 1024 for SDXL).
    pub fn native_size(&self) -> usize {
        self.files.unet.sample_size.unwrap_or(64) * self.vae.downscale.max(1)
    }

    /// Text embeddings for prompt chunks of 77 token ids each (A1111's chunking), read as
    /// plain text: each chunk's hidden states ([`SdModel::encode_chunks`], no clip skip)
    /// concatenated along the sequence, `(1, 77 × chunks, hidden)`.
    pub fn text_embeddings(&self, chunks: &[Vec<u32>]) -> Result<Tensor> {
        let chunks: Vec<EncoderChunk> = chunks.iter().map(|c| EncoderChunk::plain(c)).collect();
        let parts = self.encode_chunks(&chunks, 1)?;
        Tensor::cat(&parts, 1).map_err(engine_err("text embeddings"))
    }

    /// The SD 1.x/2.x text encoder's hidden states for each of A1111's chunks, `(1, 77,
    /// hidden)` each: its embeddings' vectors in place of their placeholders, the hidden
    /// states `clip_skip − 1` layers before the last through the final LayerNorm (A1111's
    /// "Clip skip"). Not emphasised: A1111 rescales a whole batch of chunks together
    /// (`crate::conditioning::encode`). Cached per chunk.
    pub fn encode_chunks(&self, chunks: &[EncoderChunk], clip_skip: usize) -> Result<Vec<Tensor>> {
        let skip = clip_skip.max(1) - 1;
        chunks
            .iter()
            .map(|chunk| {
                let encode = |clip: &ClipText, _: Option<&ClipText>| -> Result<_> {
                    let ids = self.token_ids(&chunk.ids)?;
                    let z = clip
                        .forward(&ids, &chunk.fix_tensors(), skip)
                        .map_err(engine_err("text encoder"))?;
                    Ok((z, None))
                };
                Ok(self
                    .text_encoders
                    .get_or_encode(std::slice::from_ref(chunk), None, skip, encode)?
                    .0)
            })
            .collect()
    }

    fn token_ids(&self, chunk: &[u32]) -> Result<Tensor> {
        Tensor::new(chunk, &self.device)
            .and_then(|t| t.unsqueeze(0))
            .map_err(engine_err("token ids"))
    }

    /// The widths of the text encoders' token embeddings: the first, and SDXL's second (what a
    /// textual-inversion embedding's vectors must have).
    pub fn text_widths(&self) -> Result<(usize, Option<usize>)> {
        Ok((
            self.files.clip.hidden_size,
            self.files.clip2.as_ref().map(|c| c.hidden_size),
        ))
    }

    /// Whether this is an SDXL model (two text encoders, added conditioning).
    pub fn is_sdxl(&self) -> bool {
        self.text_encoders.is_sdxl()
    }

    /// SDXL's text conditioning for plain prompt chunks of 77 token ids, `chunks` padded as
    /// the first tokenizer pads (end-of-text) and `chunks_2` as the second (`!`), chunk for
    /// chunk: the context `(1, 77 × chunks, hidden + hidden_2)` (each chunk the two encoders'
    /// states side by side, diffusers' `prompt_embeds`) and the pooled embedding of the
    /// **first** chunk (as A1111 pools long prompts).
    pub fn sdxl_conditioning(
        &self,
        chunks: &[Vec<u32>],
        chunks_2: &[Vec<u32>],
    ) -> Result<(Tensor, Tensor)> {
        let plain = |c: &[Vec<u32>]| c.iter().map(|c| EncoderChunk::plain(c)).collect::<Vec<_>>();
        let parts = self.encode_chunks_sdxl(&plain(chunks), &plain(chunks_2))?;
        let pooled = parts
            .first()
            .map(|p| p.pooled.clone())
            .ok_or_else(|| Error::Engine("SDXL prompt: no chunks".into()))?;
        let sides: Vec<Tensor> = parts
            .into_iter()
            .map(|p| Tensor::cat(&[p.first, p.second], 2))
            .collect::<candle_core::Result<_>>()
            .map_err(engine_err("text embeddings"))?;
        let context = Tensor::cat(&sides, 1).map_err(engine_err("text embeddings"))?;
        Ok((context, pooled))
    }

    /// SDXL's two encoders on each of A1111's chunks (`chunks` for the first, `chunks_2` for
    /// the second, chunk for chunk): the **penultimate** hidden states of each (diffusers'
    /// `hidden_states[-2]`, not normalised) and the second encoder's pooled, projected
    /// embedding. Not emphasised (see [`SdModel::encode_chunks`]); SDXL ignores clip skip,
    /// as A1111 does by default. Cached per chunk.
    pub fn encode_chunks_sdxl(
        &self,
        chunks: &[EncoderChunk],
        chunks_2: &[EncoderChunk],
    ) -> Result<Vec<SdxlChunk>> {
        if !self.is_sdxl() {
            return Err(Error::Engine(
                "not an SDXL model: no second text encoder".into(),
            ));
        }
        if chunks.len() != chunks_2.len() || chunks.is_empty() {
            return Err(Error::Engine(
                "SDXL prompt: the two tokenizers gave different chunk counts".into(),
            ));
        }
        let width = self.files.clip.hidden_size;
        chunks
            .iter()
            .zip(chunks_2)
            .map(|(c1, c2)| {
                let encode = |clip: &ClipText, clip2: Option<&ClipText>| -> Result<_> {
                    let clip2 = clip2.ok_or_else(|| {
                        Error::Engine("not an SDXL model: no second text encoder".into())
                    })?;
                    let h1 = clip
                        .penultimate(&self.token_ids(&c1.ids)?, &c1.fix_tensors())
                        .map_err(engine_err("text encoder"))?;
                    let (h2, pooled) = clip2
                        .penultimate_and_pooled(&self.token_ids(&c2.ids)?, &c2.fix_tensors())
                        .map_err(engine_err("text encoder 2"))?;
                    let both = Tensor::cat(&[h1, h2], 2).map_err(engine_err("text embeddings"))?;
                    Ok((both, Some(pooled)))
                };
                let (both, pooled) = self.text_encoders.get_or_encode(
                    std::slice::from_ref(c1),
                    Some(std::slice::from_ref(c2)),
                    0,
                    encode,
                )?;
                let total = both.dim(2).map_err(engine_err("text embeddings"))?;
                let side = |from: usize, len: usize| {
                    both.narrow(2, from, len)
                        .map_err(engine_err("text embeddings"))
                };
                Ok(SdxlChunk {
                    first: side(0, width)?,
                    second: side(width, total - width)?,
                    pooled: pooled
                        .ok_or_else(|| Error::Engine("SDXL prompt: no pooled embedding".into()))?,
                })
            })
            .collect()
    }
}

/// SDXL's encoders' outputs for one chunk.
#[derive(Debug, Clone)]
pub struct SdxlChunk {
    /// The first encoder's penultimate hidden states `(1, 77, hidden)`.
    pub first: Tensor,
    /// The second encoder's penultimate hidden states `(1, 77, hidden_2)`.
    pub second: Tensor,
    /// The second encoder's pooled, projected embedding `(1, projection)`.
    pub pooled: Tensor,
}

/// SDXL's second text encoder from its weights, which must include the projection; products
/// in `compute`.
fn build_clip2(part: Component, cfg: &config::ClipFile, compute: Compute) -> Result<ClipText> {
    let clip = ClipText::with_compute(part.weights, cfg, compute).map_err(|e| {
        Error::input(
            &part.path,
            format!("not a matching CLIP text encoder: {}", candle_msg(&e)),
        )
    })?;
    if !clip.has_projection() {
        return Err(Error::input(
            &part.path,
            "no text_projection.weight (SDXL's second text encoder needs its projection)",
        ));
    }
    Ok(clip)
}
