//! img2img, as diffusers' `StableDiffusionImg2ImgPipeline` computes it, with two deliberate
//! choices: the image is encoded to the **mean** of the VAE's latent distribution
//! (deterministic, as A1111 does), and the prompts are read and encoded as A1111 reads them
//! (emphasis, `BREAK`, prompt editing and alternation, embeddings, clip skip, 75-token chunks
//! concatenated instead of cut; [`PassConditioning`]).
//!
//! SDXL follows diffusers' `StableDiffusionXLImg2ImgPipeline`: both text encoders'
//! penultimate hidden states side by side, the pooled embedding of the second, and the size
//! ids `(h, w, 0, 0, h, w)` of the image for both guidance rows (the base model's
//! conditioning; the refiner's aesthetic score is not supported).
//!
//! Noise comes from [`TorchGenerator`], bit-identical to `torch.randn` with a CPU generator,
//! and is drawn in the same order as diffusers: the img2img noise first, then (Euler a) one
//! draw per step.

use std::ops::ControlFlow;
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use image::RgbImage;

use crate::conditioning::encode::{
    Conditioning, ModelEmbeddings, PromptOptions, TextSetup, at_step, encode_prompt,
};
use crate::conditioning::prompt::ReadPrompt;
use crate::conditioning::tokenizer::ClipTokenizer;
use crate::error::engine_err;
use crate::model::SdModel;
use crate::model::controlnet::ControlNet;
use crate::model::unet::AddedCond;
use crate::run::control::{ActiveControl, ControlParams};
use crate::run::tiling::{TileSpec, Tiles};
use crate::scheduler::noise::TorchGenerator;
use crate::scheduler::{self, Scheduler, SchedulerConfig, SchedulerTensor};
use loopback_core::settings::{Sampler, ScheduleType};
use loopback_core::{Error, Result};

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
    /// Its noise schedule (A1111's schedule type).
    pub schedule: ScheduleType,
    /// Scheduled steps (the pass runs the last `steps × strength` of them).
    pub steps: usize,
    /// Classifier-free guidance scale; ≤ 1 skips the unconditional pass.
    pub cfg: f64,
    /// Denoising strength in [0, 1].
    pub strength: f64,
    /// Seed of the noise.
    pub seed: u32,
    /// How the prompts are read and encoded: clip skip, padding, embeddings.
    pub conditioning: PromptOptions,
    /// Tiled diffusion (latent tiles blended at every step), or `None` for one UNet pass over
    /// the whole image.
    pub tiling: Option<TileSpec>,
    /// How a ControlNet steers the pass, when one is given to [`img2img_controlled`].
    pub control: Option<ControlParams>,
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
    /// SDXL's text settings (a `tokenizer_2/` folder); `None` for SD 1.x/2.x.
    pub sdxl: Option<SdxlText>,
}

/// The text settings of an SDXL folder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SdxlText {
    /// The token that pads prompts for the second text encoder (`!` in SDXL's
    /// `tokenizer_2/special_tokens_map.json`). Its vocabulary is the first tokenizer's.
    pub pad_token_2: u32,
    /// `force_zeros_for_empty_prompt` of `model_index.json` (default true, as diffusers):
    /// an empty negative prompt gives zero embeddings (and pooled embedding) instead of the
    /// encoded empty string. A1111 does the same for SDXL (`sd_models_xl.py` zeroes the
    /// text conditioning of an all-empty negative prompt), so this matches both.
    pub zero_empty_negative: bool,
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
        let sdxl = root.join("text_encoder_2").is_dir().then(|| SdxlText {
            pad_token_2: pad_token(&root.join("tokenizer_2"), &tokenizer),
            zero_empty_negative: force_zeros_for_empty_prompt(root),
        });
        let pad_token = pad_token(&root.join("tokenizer"), &tokenizer);
        let scheduler = SchedulerConfig::load(&root.join("scheduler/scheduler_config.json"))?;
        Ok(TextAndSchedule {
            tokenizer,
            pad_token,
            scheduler,
            sdxl,
        })
    }
}

/// `force_zeros_for_empty_prompt` of the folder's `model_index.json`; true when absent (the
/// default of diffusers' SDXL pipelines).
fn force_zeros_for_empty_prompt(root: &Path) -> bool {
    std::fs::read_to_string(root.join("model_index.json"))
        .ok()
        .and_then(|text| serde_json::from_str::<serde_json::Value>(&text).ok())
        .and_then(|json| json["force_zeros_for_empty_prompt"].as_bool())
        .unwrap_or(true)
}

/// The pad token named in the tokenizer folder's files (`!` for SD 2.x and SDXL's second
/// tokenizer), else end-of-text.
fn pad_token(dir: &Path, tokenizer: &ClipTokenizer) -> u32 {
    let named = ["special_tokens_map.json", "tokenizer_config.json"]
        .iter()
        .filter_map(|f| std::fs::read_to_string(dir.join(f)).ok())
        .filter_map(|text| serde_json::from_str::<serde_json::Value>(&text).ok())
        .find_map(|json| match &json["pad_token"] {
            serde_json::Value::String(s) => Some(s.clone()),
            serde_json::Value::Object(o) => {
                o.get("content").and_then(|c| c.as_str()).map(String::from)
            }
            _ => None,
        });
    named
        .and_then(|name| tokenizer.token_id(&name))
        .unwrap_or_else(|| tokenizer.eos_id())
}

/// The text conditioning of one img2img pass: every scheduled text of the prompt and of the
/// negative prompt, read and encoded once, and what the UNet gets at each step.
///
/// As A1111 by default: the prompt and the negative prompt are read with A1111's prompt
/// language (`crate::conditioning`); when their contexts have different lengths (numbers of
/// 75-token chunks) the UNet runs on each separately, unless the run asks for padding
/// (`Pad conds`), which appends empty-prompt chunks to the shorter.
#[derive(Debug)]
pub struct PassConditioning {
    cond: Vec<Conditioning>,
    /// Empty when the pass is unguided (CFG ≤ 1).
    uncond: Vec<Conditioning>,
    /// The empty prompt's conditioning, when the run pads.
    empty: Option<Conditioning>,
    /// The image size, for SDXL's size ids.
    size: (u32, u32),
}

/// One UNet call's text inputs: the context and, for SDXL, the added conditioning; its rows
/// are the call's batch.
pub type UnetText = (Tensor, Option<AddedCond>);

impl PassConditioning {
    /// Reads and encodes `p`'s prompts for an image of `size`, their schedules over
    /// `schedule_steps` UNet calls (A1111: the steps, doubled for second-order samplers such as
    /// Heun, whose step counter counts calls). The model caches what its encoders computed; a
    /// model asked to release its text encoders after use does so here.
    pub fn new(
        model: &SdModel,
        text: &TextAndSchedule,
        p: &Img2ImgParams,
        size: (u32, u32),
        schedule_steps: usize,
    ) -> Result<Self> {
        if model.is_sdxl() && text.sdxl.is_none() {
            return Err(Error::Engine(
                "an SDXL model needs the folder's SDXL text settings (tokenizer_2)".into(),
            ));
        }
        let sdxl = text.sdxl.filter(|_| model.is_sdxl());
        let setup = TextSetup {
            tokenizer: &text.tokenizer,
            pad: text.pad_token,
            pad_2: sdxl.map(|x| x.pad_token_2),
            zero_empty_negative: sdxl.is_some_and(|x| x.zero_empty_negative),
            clip_skip: p.conditioning.clip_skip,
        };
        let (width, width_2) = model.text_widths()?;
        let embeddings =
            ModelEmbeddings::new(&text.tokenizer, &p.conditioning.embeddings, width, width_2);
        let read = |prompt: &str| {
            ReadPrompt::new(&text.tokenizer, prompt, schedule_steps, &embeddings.index)
        };
        let encode = |prompt: &str, negative: bool| {
            encode_prompt(model, &setup, &embeddings, &read(prompt), negative)
        };
        let guided = p.cfg > 1.0;
        let conditioning = PassConditioning {
            cond: encode(&p.prompt, false)?,
            uncond: if guided {
                encode(&p.negative_prompt, true)?
            } else {
                Vec::new()
            },
            empty: if guided && p.conditioning.pad_conds {
                encode("", false)?.into_iter().next()
            } else {
                None
            },
            size,
        };
        model.text_encoders.prompts_encoded();
        Ok(conditioning)
    }

    /// The UNet calls of denoising step `step` (0-based, counted from the first step the pass
    /// runs, as A1111 counts): one call with the rows `[uncond, cond]` (or `[cond]` unguided),
    /// or, when the two contexts differ in length and the run does not pad, one call each.
    pub fn at_step(&self, model: &SdModel, step: usize) -> Result<Vec<UnetText>> {
        let cond = at_step(&self.cond, step);
        if self.uncond.is_empty() {
            return Ok(vec![self.unet_text(model, &[cond])?]);
        }
        let uncond = at_step(&self.uncond, step);
        let len = |c: &Conditioning| c.context.dim(1).unwrap_or(0);
        if len(cond) == len(uncond) {
            return Ok(vec![self.unet_text(model, &[uncond, cond])?]);
        }
        match &self.empty {
            Some(empty) => {
                let target = len(cond).max(len(uncond));
                let padded = [pad_to(uncond, empty, target)?, pad_to(cond, empty, target)?];
                Ok(vec![self.unet_text(model, &[&padded[0], &padded[1]])?])
            }
            None => Ok(vec![
                self.unet_text(model, &[uncond])?,
                self.unet_text(model, &[cond])?,
            ]),
        }
    }

    /// One call's inputs for `rows`: contexts stacked, and SDXL's pooled embeddings and size
    /// ids in the same row order.
    fn unet_text(&self, model: &SdModel, rows: &[&Conditioning]) -> Result<UnetText> {
        let stack = |ts: Vec<&Tensor>| {
            Tensor::cat(&ts, 0)
                .and_then(|t| t.to_dtype(model.dtype))
                .map_err(engine_err("text embeddings"))
        };
        let context = stack(rows.iter().map(|c| &c.context).collect())?;
        let pooled: Option<Vec<&Tensor>> = rows.iter().map(|c| c.pooled.as_ref()).collect();
        let Some(pooled) = pooled else {
            return Ok((context, None));
        };
        let text_embeds = Tensor::cat(&pooled, 0).map_err(engine_err("text embeddings"))?;
        let (w, h) = (self.size.0 as f32, self.size.1 as f32);
        // Original size, crop top-left, target size: the image itself, uncropped (diffusers'
        // defaults for the base model; A1111 passes the same with its default crop 0, 0).
        let ids: Vec<f32> = rows.iter().flat_map(|_| [h, w, 0.0, 0.0, h, w]).collect();
        let time_ids = Tensor::from_vec(ids, (rows.len(), 6), &model.device)
            .map_err(engine_err("size ids"))?;
        Ok((
            context,
            Some(AddedCond {
                text_embeds,
                time_ids,
            }),
        ))
    }
}

/// `c` with `empty`'s context appended until it is `target` tokens long (A1111's `pad_cond`).
fn pad_to(c: &Conditioning, empty: &Conditioning, target: usize) -> Result<Conditioning> {
    let len = c.context.dim(1).map_err(engine_err("text embeddings"))?;
    let unit = empty
        .context
        .dim(1)
        .map_err(engine_err("text embeddings"))?;
    let repeats = target.saturating_sub(len) / unit.max(1);
    let mut parts = vec![c.context.clone()];
    parts.extend(std::iter::repeat_n(empty.context.clone(), repeats));
    Ok(Conditioning {
        end_at_step: c.end_at_step,
        context: Tensor::cat(&parts, 1).map_err(engine_err("text embeddings"))?,
        pooled: c.pooled.clone(),
    })
}

/// The UNet's text inputs at the first step, rows `[uncond, cond]` in one call (padded with
/// empty-prompt chunks if their lengths differ): what a test compares with diffusers.
pub fn conditioning(
    model: &SdModel,
    text: &TextAndSchedule,
    p: &Img2ImgParams,
    size: (u32, u32),
) -> Result<UnetText> {
    let mut padded = p.clone();
    padded.conditioning.pad_conds = true;
    let pass = PassConditioning::new(model, text, &padded, size, p.steps)?;
    let mut calls = pass.at_step(model, 0)?;
    Ok(calls.remove(0))
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
    img2img_controlled(model, None, text, image, p, on_step)
}

/// [`img2img`] steered by `controlnet` with `p.control` (diffusers'
/// `StableDiffusionControlNetImg2ImgPipeline`, with the extension's control modes): the
/// control image is `image` (preprocessed as `p.control` says), each tile gets its crop.
pub fn img2img_controlled(
    model: &SdModel,
    controlnet: Option<&ControlNet>,
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

    let mut sched: Box<dyn Scheduler<Tensor> + Send> =
        scheduler::build(p.sampler, p.schedule, &text.scheduler, p.steps)?;
    let text_inputs =
        PassConditioning::new(model, text, p, image.dimensions(), p.steps * sched.order())?;

    // The previous loop's decode and the text encoder left freed buffers in the heap.
    crate::allocator::release_free_memory();
    let pixels = image_to_tensor(image, device)?
        .to_dtype(model.vae_dtype)
        .map_err(engine_err("image"))?;
    let latents = model
        .vae
        .encode(&pixels)
        .and_then(|l| l.to_dtype(DType::F32))
        .map_err(engine_err("VAE encode"))?;

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
    let (_, _, lat_h, lat_w) = latents.dims4().map_err(engine_err("latents"))?;
    let tiles = p
        .tiling
        .map(|spec| Tiles::new(lat_h, lat_w, &spec, device))
        .transpose()?;
    let control = match (controlnet, p.control) {
        (Some(net), Some(params)) => {
            let active = ActiveControl::new(net, params, image, device)?;
            active.check_size(lat_h, lat_w)?;
            Some(active)
        }
        _ => None,
    };
    // The UNet passes of this loop share the kernels' scratch buffers, and reuse their
    // activations' heap blocks however large.
    let scratch = crate::kernels::ScratchHold::new();
    let heap = crate::allocator::HeapOnly::begin();
    for (n, i) in range.enumerate() {
        let t = sched.timesteps()[i];
        let calls = text_inputs.at_step(model, n)?;
        let scaled = sched.scale_model_input(&latents, i)?;
        // The guided noise prediction for (a crop of) the scaled latents lying at `rect`.
        let predict = |input: &Tensor, rect: (usize, usize, usize, usize)| -> Result<Tensor> {
            let mut outs = Vec::with_capacity(2);
            // Rows across the calls: with guidance the first is the negative prompt's.
            let mut row = 0;
            for (context, added) in &calls {
                let rows = context.dim(0).map_err(engine_err("UNet input"))?;
                let input = Tensor::cat(&vec![input; rows], 0)
                    .and_then(|t| t.to_dtype(model.dtype))
                    .map_err(engine_err("UNet input"))?;
                let uncond_rows: Vec<bool> = (row..row + rows).map(|r| guided && r == 0).collect();
                row += rows;
                let residuals = match &control {
                    Some(c) => c.residuals(
                        &input,
                        t,
                        context,
                        added.as_ref(),
                        rect,
                        &uncond_rows,
                        (n, total),
                    )?,
                    None => None,
                };
                outs.push(
                    model
                        .unet
                        .forward_controlled(&input, t, context, added.as_ref(), residuals.as_ref())
                        .and_then(|o| o.to_dtype(DType::F32))
                        .map_err(engine_err("UNet"))?,
                );
            }
            let out = Tensor::cat(&outs, 0).map_err(engine_err("UNet"))?;
            if !guided {
                return Ok(out);
            }
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
            .map_err(engine_err("guidance"))
        };
        let eps = match &tiles {
            Some(tiles) => tiles.blend(&latents, predict, &scaled)?,
            None => predict(&scaled, (0, 0, lat_h, lat_w))?,
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

    // The UNet's activations and scratch are free now; return them before the decode's own
    // buffers.
    drop(scratch);
    // Returns the free memory too.
    drop(heap);
    let decoded = model
        .vae
        .decode(
            &latents
                .to_dtype(model.vae_dtype)
                .map_err(engine_err("VAE decode"))?,
        )
        .map_err(engine_err("VAE decode"))?;
    tensor_to_image(&decoded).map(Some)
}
