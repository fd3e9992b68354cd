//! img2img, as diffusers' `StableDiffusionImg2ImgPipeline` computes it, with two deliberate
//! choices: the image is encoded to the **mean** of the VAE's latent distribution
//! (deterministic, as A1111 does), and prompts longer than 77 tokens are split into A1111's
//! 75-token chunks whose embeddings are concatenated instead of being cut.
//!
//! Noise comes from [`TorchGenerator`], bit-identical to `torch.randn` with a CPU generator,
//! and is drawn in the same order as diffusers: the img2img noise first, then (Euler a) one
//! draw per step.

use std::ops::ControlFlow;
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use image::RgbImage;

use super::model::{SdModel, engine_err};
use super::noise::TorchGenerator;
use super::scheduler::{self, Scheduler, SchedulerConfig, SchedulerTensor};
use super::tokenizer::ClipTokenizer;
use crate::settings::Sampler;
use crate::{Error, Result};

impl SchedulerTensor for Tensor {
    fn lin_comb(terms: &[(f64, &Self)]) -> Result<Self> {
        let mut acc: Option<Tensor> = None;
        for &(c, t) in terms {
            let term = t.affine(c, 0.0).map_err(engine_err("scheduler"))?;
            acc = Some(match acc {
                None => term,
                Some(a) => (a + term).map_err(engine_err("scheduler"))?,
            });
        }
        acc.ok_or_else(|| Error::Engine("scheduler: empty linear combination".into()))
    }

    fn clamp(&self, min: f64, max: f64) -> Result<Self> {
        Tensor::clamp(self, min, max).map_err(engine_err("scheduler"))
    }
}

/// What one img2img pass does.
#[derive(Debug, Clone)]
pub struct Img2ImgParams {
    /// The prompt.
    pub prompt: String,
    /// The negative prompt.
    pub negative_prompt: String,
    /// The sampler.
    pub sampler: Sampler,
    /// Scheduled steps (the pass runs the last `steps × strength` of them).
    pub steps: usize,
    /// Classifier-free guidance scale; ≤ 1 skips the unconditional pass.
    pub cfg: f64,
    /// Denoising strength in [0, 1].
    pub strength: f64,
    /// Seed of the noise.
    pub seed: u32,
}

/// Progress after a denoising step.
#[derive(Debug)]
pub struct StepProgress<'a> {
    /// 1-based step number within this pass.
    pub step: usize,
    /// Steps this pass runs.
    pub total: usize,
    /// The latents after the step (for previews).
    pub latents: &'a Tensor,
}

/// The tokenizer and scheduler settings that go with a model folder.
#[derive(Debug)]
pub struct TextAndSchedule {
    /// The CLIP tokenizer: the folder's own `vocab.json` + `merges.txt`, else the bundled one.
    pub tokenizer: ClipTokenizer,
    /// The token that pads prompts to 77 (end-of-text for SD 1.x, `!` for SD 2.x).
    pub pad_token: u32,
    /// The model's scheduler settings.
    pub scheduler: SchedulerConfig,
}

impl TextAndSchedule {
    /// Reads the tokenizer and scheduler of the diffusers folder `root`.
    pub fn load(root: &Path) -> Result<Self> {
        let vocab = root.join("tokenizer/vocab.json");
        let merges = root.join("tokenizer/merges.txt");
        let tokenizer = if vocab.is_file() && merges.is_file() {
            ClipTokenizer::from_vocab_merges(&vocab, &merges)?
        } else {
            ClipTokenizer::bundled()?
        };
        let pad_token = pad_token(root, &tokenizer);
        let scheduler = SchedulerConfig::load(&root.join("scheduler/scheduler_config.json"))?;
        Ok(TextAndSchedule {
            tokenizer,
            pad_token,
            scheduler,
        })
    }
}

/// The pad token named in the folder's tokenizer files (`!` for SD 2.x), else end-of-text.
fn pad_token(root: &Path, tokenizer: &ClipTokenizer) -> u32 {
    let named = [
        "tokenizer/special_tokens_map.json",
        "tokenizer/tokenizer_config.json",
    ]
    .iter()
    .filter_map(|f| std::fs::read_to_string(root.join(f)).ok())
    .filter_map(|text| serde_json::from_str::<serde_json::Value>(&text).ok())
    .find_map(|json| match &json["pad_token"] {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Object(o) => o.get("content").and_then(|c| c.as_str()).map(String::from),
        _ => None,
    });
    named
        .and_then(|name| tokenizer.token_id(&name))
        .unwrap_or_else(|| tokenizer.eos_id())
}

/// Token chunks for the prompt and the negative prompt, padded to the same number of chunks
/// (with empty-prompt chunks), as A1111 does.
fn token_chunks(text: &TextAndSchedule, p: &Img2ImgParams) -> (Vec<Vec<u32>>, Vec<Vec<u32>>) {
    let encode = |s: &str| -> Vec<Vec<u32>> {
        text.tokenizer
            .encode_chunks(s, text.pad_token)
            .iter()
            .map(|c| c.to_vec())
            .collect()
    };
    let mut cond = encode(&p.prompt);
    let mut uncond = encode(&p.negative_prompt);
    let empty = encode("");
    while cond.len() < uncond.len() {
        cond.extend(empty.iter().cloned());
    }
    while uncond.len() < cond.len() {
        uncond.extend(empty.iter().cloned());
    }
    (cond, uncond)
}

/// An 8-bit RGB image as a `(1, 3, H, W)` f32 tensor in [−1, 1] (`u8/255·2 − 1`).
pub fn image_to_tensor(image: &RgbImage, device: &Device) -> Result<Tensor> {
    let (w, h) = image.dimensions();
    let values: Vec<f32> = image
        .as_raw()
        .iter()
        .map(|&v| f32::from(v) / 255.0 * 2.0 - 1.0)
        .collect();
    Tensor::from_vec(values, (h as usize, w as usize, 3), device)
        .and_then(|t| t.permute((2, 0, 1)))
        .and_then(|t| t.unsqueeze(0))
        .map_err(engine_err("image to tensor"))
}

/// A `(1, 3, H, W)` tensor in [−1, 1] as an 8-bit image: `trunc(255·clamp((x + 1)/2, 0, 1))`.
pub fn tensor_to_image(tensor: &Tensor) -> Result<RgbImage> {
    let t = tensor
        .to_dtype(DType::F32)
        .and_then(|t| t.squeeze(0))
        .and_then(|t| t.permute((1, 2, 0)))
        .map_err(engine_err("tensor to image"))?;
    let (h, w, _) = t.dims3().map_err(engine_err("tensor to image"))?;
    let values: Vec<f32> = t
        .flatten_all()
        .and_then(|t| t.to_vec1())
        .map_err(engine_err("tensor to image"))?;
    let bytes = values
        .iter()
        .map(|&x| (255.0 * ((x + 1.0) / 2.0).clamp(0.0, 1.0)) as u8)
        .collect();
    RgbImage::from_raw(w as u32, h as u32, bytes)
        .ok_or_else(|| Error::Engine("decoded image has the wrong size".into()))
}

/// Runs img2img on `image` (its size must be a multiple of the VAE's downscale). `on_step` is
/// called after every denoising step; returning `ControlFlow::Break` cancels the pass, which
/// then returns `Ok(None)`.
pub fn img2img(
    model: &SdModel,
    text: &TextAndSchedule,
    image: &RgbImage,
    p: &Img2ImgParams,
    on_step: &mut dyn FnMut(StepProgress<'_>) -> ControlFlow<()>,
) -> Result<Option<RgbImage>> {
    let down = model.vae.downscale as u32;
    if !image.width().is_multiple_of(down) || !image.height().is_multiple_of(down) {
        return Err(Error::Engine(format!(
            "image size {}x{} is not a multiple of {down}",
            image.width(),
            image.height()
        )));
    }
    if p.strength <= 0.0 {
        return Ok(Some(image.clone()));
    }
    let device = &model.device;
    let guided = p.cfg > 1.0;

    let (cond, uncond) = token_chunks(text, p);
    let cond = model.text_embeddings(&cond)?;
    let context = if guided {
        let uncond = model.text_embeddings(&uncond)?;
        Tensor::cat(&[uncond, cond], 0).map_err(engine_err("text embeddings"))?
    } else {
        cond
    };

    let pixels = image_to_tensor(image, device)?
        .to_dtype(model.dtype)
        .map_err(engine_err("image"))?;
    let latents = model
        .vae
        .encode(&pixels)
        .and_then(|l| l.to_dtype(DType::F32))
        .map_err(engine_err("VAE encode"))?;

    let mut sched: Box<dyn Scheduler<Tensor> + Send> =
        scheduler::build(p.sampler, &text.scheduler, p.steps)?;
    let mut range = sched.img2img(p.strength)?;
    if range.is_empty() {
        // Fewer than one scheduled step: run the last one (the spec's "at least one step").
        let last = sched.timesteps().len().saturating_sub(1);
        sched.restart(last);
        range = last..sched.timesteps().len();
    }

    let mut generator = TorchGenerator::new(u64::from(p.seed));
    let mut draw = |like: &Tensor| -> Result<Tensor> {
        let values = generator.randn(like.elem_count());
        Tensor::from_vec(values, like.dims(), device).map_err(engine_err("noise"))
    };
    let noise = draw(&latents)?;
    let mut latents = sched.add_noise(&latents, &noise, range.start)?;

    let total = range.len();
    for (n, i) in range.enumerate() {
        let t = sched.timesteps()[i];
        let input = if guided {
            Tensor::cat(&[&latents, &latents], 0).map_err(engine_err("UNet input"))?
        } else {
            latents.clone()
        };
        let input = sched.scale_model_input(&input, i)?;
        let out = model
            .unet
            .forward(
                &input
                    .to_dtype(model.dtype)
                    .map_err(engine_err("UNet input"))?,
                t,
                &context,
            )
            .and_then(|o| o.to_dtype(DType::F32))
            .map_err(engine_err("UNet"))?;
        let eps = if guided {
            let uncond = out
                .get(0)
                .and_then(|t| t.unsqueeze(0))
                .map_err(engine_err("guidance"))?;
            let cond = out
                .get(1)
                .and_then(|t| t.unsqueeze(0))
                .map_err(engine_err("guidance"))?;
            // diffusers' order of operations: uncond + g·(cond − uncond).
            (&uncond
                + ((&cond - &uncond).and_then(|d| d * p.cfg)).map_err(engine_err("guidance"))?)
            .map_err(engine_err("guidance"))?
        } else {
            out
        };
        latents = sched.step(&eps, i, &latents, &mut draw)?;
        if on_step(StepProgress {
            step: n + 1,
            total,
            latents: &latents,
        })
        .is_break()
        {
            return Ok(None);
        }
    }

    let decoded = model
        .vae
        .decode(
            &latents
                .to_dtype(model.dtype)
                .map_err(engine_err("VAE decode"))?,
        )
        .map_err(engine_err("VAE decode"))?;
    tensor_to_image(&decoded).map(Some)
}
