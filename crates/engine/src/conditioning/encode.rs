//! From a read prompt to the UNet's text conditioning: every scheduled text's chunks as the
//! model's text encoders take them (start and end tokens, padding, embedding vectors in place
//! of their placeholders), encoded with emphasis and clip skip.

use std::sync::Arc;

use candle_core::{DType, Tensor};

use crate::conditioning::prompt::{EmbeddingIndex, ReadPrompt};
use crate::conditioning::tokenizer::{ClipTokenizer, RawChunk};
use crate::error::engine_err;
use crate::load::embeddings::Embeddings;
use crate::model::SdModel;
use crate::model::text::{EncoderChunk, Fix};
use loopback_core::Result;

/// How a run's prompts are read and encoded, besides the text.
#[derive(Debug, Clone)]
pub struct PromptOptions {
    /// A1111's "Clip skip" (1–12; 1 = the last layer). SD 1.x/2.x only.
    pub clip_skip: usize,
    /// Pad the shorter of prompt and negative prompt with empty-prompt chunks (A1111's
    /// `Pad conds`; off by default: the UNet runs on each).
    pub pad_conds: bool,
    /// The textual-inversion embeddings prompts may call.
    pub embeddings: Arc<Embeddings>,
}

impl Default for PromptOptions {
    fn default() -> Self {
        PromptOptions {
            clip_skip: 1,
            pad_conds: false,
            embeddings: Arc::new(Embeddings::default()),
        }
    }
}

/// What the encoders need besides the prompt.
#[derive(Debug, Clone)]
pub struct TextSetup<'a> {
    /// The tokenizer.
    pub tokenizer: &'a ClipTokenizer,
    /// The first encoder's pad token.
    pub pad: u32,
    /// SDXL: the second encoder's pad token.
    pub pad_2: Option<u32>,
    /// SDXL: an empty negative prompt is all zeros (`force_zeros_for_empty_prompt`).
    pub zero_empty_negative: bool,
    /// A1111's "Clip skip" (1 = the last layer); SD 1.x/2.x only.
    pub clip_skip: usize,
}

/// One scheduled text's conditioning.
#[derive(Debug, Clone)]
pub struct Conditioning {
    /// The last step (0-based step counter ≤ this) it is used for.
    pub end_at_step: usize,
    /// The cross-attention context `(1, 77 × chunks, width)`.
    pub context: Tensor,
    /// SDXL's pooled embedding `(1, projection)`.
    pub pooled: Option<Tensor>,
}

/// The embeddings usable with a model: an index by name and each one's vectors per encoder.
#[derive(Debug, Clone, Default)]
pub struct ModelEmbeddings {
    /// Lookup by name's token ids.
    pub index: EmbeddingIndex,
    /// Per index entry: vectors for the first and (SDXL) second encoder, and the cache key.
    vectors: Vec<(Tensor, Option<Tensor>, String)>,
    /// Embeddings that do not fit this model (name, family).
    pub skipped: Vec<(String, &'static str)>,
}

impl ModelEmbeddings {
    /// The embeddings of `all` whose vectors fit the model's encoders (`width`, `width_2`).
    pub fn new(
        tokenizer: &ClipTokenizer,
        all: &Embeddings,
        width: usize,
        width_2: Option<usize>,
    ) -> Self {
        let mut usable = Vec::new();
        let mut vectors = Vec::new();
        let mut skipped = Vec::new();
        for e in &all.list {
            match e.for_encoders(width, width_2) {
                Some((first, second)) => {
                    usable.push((e.name.as_str(), e.count()));
                    vectors.push((first, second, format!("{}#{}", e.name, e.short_hash)));
                }
                None => skipped.push((e.name.clone(), e.family())),
            }
        }
        ModelEmbeddings {
            index: EmbeddingIndex::new(tokenizer, usable),
            vectors,
            skipped,
        }
    }
}

/// The conditioning of every text of `read`, in schedule order, as A1111's
/// `get_learned_conditioning` computes it: the texts are one batch, so each is padded with
/// empty chunks to the batch's chunk count, and the emphasis of chunk *i* rescales the
/// batch's chunk *i* of every text together (A1111's "Original" emphasis, per encoder).
/// `negative` marks a negative prompt (for SDXL's zeros).
pub fn encode_prompt(
    model: &SdModel,
    setup: &TextSetup<'_>,
    embeddings: &ModelEmbeddings,
    read: &ReadPrompt,
    negative: bool,
) -> Result<Vec<Conditioning>> {
    let count = read
        .texts
        .iter()
        .map(|t| t.chunked.chunks.len())
        .max()
        .unwrap_or(1);
    let empty = RawChunk::default();
    // Chunk i of every text, as the first and (SDXL) the second encoder take it.
    let mut contexts: Vec<Vec<Tensor>> = vec![Vec::new(); read.texts.len()];
    let mut pooled: Vec<Option<Tensor>> = vec![None; read.texts.len()];
    for i in 0..count {
        let raw: Vec<&RawChunk> = read
            .texts
            .iter()
            .map(|t| t.chunked.chunks.get(i).unwrap_or(&empty))
            .collect();
        let wrap = |pad: u32, second: bool| -> Result<Vec<EncoderChunk>> {
            raw.iter()
                .map(|c| encoder_chunk(setup.tokenizer, c, pad, embeddings, second))
                .collect()
        };
        let first = wrap(setup.pad, false)?;
        match setup.pad_2.filter(|_| model.is_sdxl()) {
            None => {
                let zs = model.encode_chunks(&first, setup.clip_skip)?;
                for (j, z) in emphasize(&zs, &first)?.into_iter().enumerate() {
                    contexts[j].push(z);
                }
            }
            Some(pad_2) => {
                let second = wrap(pad_2, true)?;
                let outs = model.encode_chunks_sdxl(&first, &second)?;
                let h1: Vec<Tensor> = outs.iter().map(|o| o.first.clone()).collect();
                let h2: Vec<Tensor> = outs.iter().map(|o| o.second.clone()).collect();
                let (h1, h2) = (emphasize(&h1, &first)?, emphasize(&h2, &second)?);
                for (j, (a, b)) in h1.into_iter().zip(h2).enumerate() {
                    let both = Tensor::cat(&[a, b], 2).map_err(engine_err("text embeddings"))?;
                    contexts[j].push(both);
                    if i == 0 {
                        pooled[j] = Some(outs[j].pooled.clone());
                    }
                }
            }
        }
    }
    let zero =
        negative && setup.zero_empty_negative && read.texts.iter().all(|t| t.text.is_empty());
    read.texts
        .iter()
        .zip(contexts.into_iter().zip(pooled))
        .map(|(text, (parts, pooled))| {
            let mut context = Tensor::cat(&parts, 1).map_err(engine_err("text embeddings"))?;
            let mut pooled = pooled;
            if zero && model.is_sdxl() {
                let zeros = |t: &Tensor| t.zeros_like().map_err(engine_err("text embeddings"));
                context = zeros(&context)?;
                pooled = pooled.as_ref().map(zeros).transpose()?;
            }
            Ok(Conditioning {
                end_at_step: text.end_at_step,
                context,
                pooled,
            })
        })
        .collect()
}

/// A1111's default emphasis ("Original") on a batch of chunks `zs` `(1, 77, width)` each:
/// every token's vector multiplied by its weight, then the whole batch rescaled so that its
/// mean (over every element of every chunk) is what it was before. A batch without emphasis
/// is returned as it is (the rescale would be by exactly 1).
fn emphasize(zs: &[Tensor], chunks: &[EncoderChunk]) -> Result<Vec<Tensor>> {
    if chunks
        .iter()
        .all(|c| c.multipliers.iter().all(|&m| m == 1.0))
    {
        return Ok(zs.to_vec());
    }
    let mean = |ts: &[Tensor]| -> Result<f64> {
        let mut sum = 0.0;
        for t in ts {
            sum += f64::from(
                t.to_dtype(DType::F32)
                    .and_then(|t| t.mean_all())
                    .and_then(|m| m.to_scalar::<f32>())
                    .map_err(engine_err("emphasis"))?,
            );
        }
        Ok(sum / ts.len().max(1) as f64)
    };
    let original = mean(zs)?;
    let weighted: Vec<Tensor> = zs
        .iter()
        .zip(chunks)
        .map(|(z, c)| {
            let seq = z.dim(1)?;
            let mut w = c.multipliers.clone();
            w.resize(seq, 1.0);
            let w = Tensor::from_vec(w, (1, seq, 1), z.device())?.to_dtype(z.dtype())?;
            z.broadcast_mul(&w)
        })
        .collect::<candle_core::Result<_>>()
        .map_err(engine_err("emphasis"))?;
    let scale = original / mean(&weighted)?;
    weighted
        .iter()
        .map(|t| (t * scale).map_err(engine_err("emphasis")))
        .collect()
}

/// A chunk as one encoder takes it: wrapped and padded, with its embeddings' vectors.
fn encoder_chunk(
    tokenizer: &ClipTokenizer,
    chunk: &RawChunk,
    pad: u32,
    embeddings: &ModelEmbeddings,
    second: bool,
) -> Result<EncoderChunk> {
    let ids = tokenizer.wrap_chunk(&chunk.tokens, pad).to_vec();
    let mut multipliers = vec![1.0f32; ids.len()];
    let n = chunk.multipliers.len().min(ids.len() - 2);
    multipliers[1..=n].copy_from_slice(&chunk.multipliers[..n]);
    let fixes = chunk
        .fixes
        .iter()
        .filter_map(|&(offset, i)| {
            let (first, second_vectors, key) = embeddings.vectors.get(i)?;
            let vectors = if second {
                second_vectors.clone()?
            } else {
                first.clone()
            };
            Some(Fix {
                offset,
                key: key.clone(),
                vectors,
            })
        })
        .collect();
    Ok(EncoderChunk {
        ids,
        multipliers,
        fixes,
    })
}

/// The conditioning for one denoising step: the entry whose range holds `step` (0-based,
/// counted from the first step this pass runs, as A1111 counts in img2img).
pub fn at_step(schedule: &[Conditioning], step: usize) -> &Conditioning {
    schedule
        .iter()
        .find(|c| step <= c.end_at_step)
        .unwrap_or(&schedule[0])
}
