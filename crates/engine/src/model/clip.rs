//! The CLIP text encoder, with or without a text projection (SDXL's second encoder is
//! `CLIPTextModelWithProjection`).
//!
//! Our own, small implementation: candle 0.11's `ClipTextTransformer` only builds from its
//! presets (its `Config` fields are private), so it cannot load a fine-tune with another shape
//! or a tiny test model, and it always expects the `text_model.` prefix that transformers ≥ 5
//! no longer writes. This one takes its shape from `text_encoder/config.json` and accepts both
//! key layouts.
//!
//! With [`Compute::Bf16`] (bf16 on the CPU) its linear layers keep only their weights packed
//! into bf16 and multiply in bf16 with f32 sums, and the token embedding table is held in
//! bf16; the activations, the layer norms, the attention's products and its softmax stay f32.

use candle_core::{D, DType, Device, Module, Tensor};
use candle_nn::{Embedding, LayerNorm, VarBuilder};

use crate::kernels::compute::Compute;
use crate::kernels::linear::Linear;
use crate::model::config::ClipFile;

/// The MLP activation.
#[derive(Debug, Clone, Copy)]
enum Activation {
    QuickGelu,
    Gelu,
}

impl Activation {
    fn apply(self, xs: &Tensor) -> candle_core::Result<Tensor> {
        match self {
            Activation::QuickGelu => xs * candle_nn::ops::sigmoid(&(xs * 1.702)?)?,
            Activation::Gelu => xs.gelu_erf(),
        }
    }
}

/// One transformer layer.
#[derive(Debug)]
struct Layer {
    norm1: LayerNorm,
    q: Linear,
    k: Linear,
    v: Linear,
    out: Linear,
    norm2: LayerNorm,
    fc1: Linear,
    fc2: Linear,
}

/// The CLIP text transformer.
#[derive(Debug)]
pub struct ClipText {
    token_embedding: Embedding,
    position_embedding: Tensor,
    layers: Vec<Layer>,
    final_norm: LayerNorm,
    heads: usize,
    activation: Activation,
    projection: Option<Linear>,
}

impl ClipText {
    /// Builds the encoder from `vb` (keys with or without the `text_model.` prefix).
    /// A `text_projection.weight` (no bias) at the root is loaded as the text projection
    /// (SDXL's `text_encoder_2`). Products in f32.
    pub fn new(vb: VarBuilder, cfg: &ClipFile) -> candle_core::Result<Self> {
        Self::with_compute(vb, cfg, Compute::F32)
    }

    /// [`ClipText::new`] with the linear layers' CPU products in `compute`'s arithmetic (bf16:
    /// their weights packed into bf16, and the token embeddings held in bf16, when `vb` gives
    /// f32 CPU tensors).
    pub fn with_compute(
        vb: VarBuilder,
        cfg: &ClipFile,
        compute: Compute,
    ) -> candle_core::Result<Self> {
        let linear = |vb: VarBuilder, shape, bias| Linear::new(vb, shape, bias, compute);
        let projection = if vb.contains_tensor("text_projection.weight") {
            let width = cfg.projection_dim.unwrap_or(cfg.hidden_size);
            Some(linear(
                vb.pp("text_projection"),
                (cfg.hidden_size, width),
                false,
            )?)
        } else {
            None
        };
        let vb = if vb.contains_tensor("text_model.embeddings.token_embedding.weight") {
            vb.pp("text_model")
        } else {
            vb
        };
        let hidden = cfg.hidden_size;
        let eps = cfg.layer_norm_eps;
        let emb = vb.pp("embeddings");
        let token_embedding =
            candle_nn::embedding(cfg.vocab_size, hidden, emb.pp("token_embedding"))?;
        let token_embedding = match compute {
            // The table is only looked up: held in bf16, its rows cast to f32 when read.
            c if c.bf16_weights() && token_embedding.embeddings().dtype() == DType::F32 => {
                let table = token_embedding.embeddings().to_dtype(DType::BF16)?;
                Embedding::new(table, hidden)
            }
            _ => token_embedding,
        };
        let position_embedding = emb
            .pp("position_embedding")
            .get((cfg.max_position_embeddings, hidden), "weight")?;
        let layers = (0..cfg.num_hidden_layers)
            .map(|i| {
                let l = vb.pp("encoder.layers").pp(i.to_string());
                let attn = l.pp("self_attn");
                Ok(Layer {
                    norm1: candle_nn::layer_norm(hidden, eps, l.pp("layer_norm1"))?,
                    q: linear(attn.pp("q_proj"), (hidden, hidden), true)?,
                    k: linear(attn.pp("k_proj"), (hidden, hidden), true)?,
                    v: linear(attn.pp("v_proj"), (hidden, hidden), true)?,
                    out: linear(attn.pp("out_proj"), (hidden, hidden), true)?,
                    norm2: candle_nn::layer_norm(hidden, eps, l.pp("layer_norm2"))?,
                    fc1: linear(l.pp("mlp.fc1"), (hidden, cfg.intermediate_size), true)?,
                    fc2: linear(l.pp("mlp.fc2"), (cfg.intermediate_size, hidden), true)?,
                })
            })
            .collect::<candle_core::Result<Vec<_>>>()?;
        let final_norm = candle_nn::layer_norm(hidden, eps, vb.pp("final_layer_norm"))?;
        let activation = match cfg.hidden_act.as_str() {
            "gelu" => Activation::Gelu,
            _ => Activation::QuickGelu,
        };
        Ok(ClipText {
            token_embedding,
            position_embedding,
            layers,
            final_norm,
            heads: cfg.num_attention_heads,
            activation,
            projection,
        })
    }

    /// Whether the encoder has a text projection (and so a pooled output).
    pub fn has_projection(&self) -> bool {
        self.projection.is_some()
    }

    /// The embeddings plus the first `layers` transformer layers, without the final norm.
    /// Each fix `(offset, vectors)` replaces the token embeddings from position `offset + 1`
    /// (just after the start token) with `vectors` `(n, hidden)`: a textual-inversion
    /// embedding in the place of its placeholder tokens, as A1111's `EmbeddingsWithFixes`
    /// does (vectors that would run past the end are cut).
    fn run_layers(
        &self,
        ids: &Tensor,
        fixes: &[(usize, Tensor)],
        layers: usize,
    ) -> candle_core::Result<Tensor> {
        let (batch, seq) = ids.dims2()?;
        let positions = self.position_embedding.narrow(0, 0, seq)?;
        // f32 rows of a bf16 table (a no-op when the table has the activations' dtype).
        let mut tokens = self
            .token_embedding
            .forward(ids)?
            .to_dtype(self.position_embedding.dtype())?;
        for (offset, vectors) in fixes {
            tokens = splice_rows(&tokens, offset + 1, vectors)?;
        }
        let mut xs = tokens.broadcast_add(&positions)?;
        let mask = causal_mask(seq, xs.device(), xs.dtype())?;
        for layer in &self.layers[..layers.min(self.layers.len())] {
            xs = self.layer_forward(layer, &xs, &mask, batch, seq)?;
        }
        Ok(xs)
    }

    /// SDXL's conditioning from this encoder: the **penultimate** layer's hidden states
    /// (diffusers' `hidden_states[-2]`: the input of the last layer, not normalised),
    /// `(batch, seq, hidden)`; `fixes` as in [`ClipText::forward`].
    pub fn penultimate(
        &self,
        ids: &Tensor,
        fixes: &[(usize, Tensor)],
    ) -> candle_core::Result<Tensor> {
        self.run_layers(ids, fixes, self.layers.len().saturating_sub(1))
    }

    /// The penultimate hidden states (as [`ClipText::penultimate`]) and the pooled,
    /// projected text embedding `(batch, projection)`: the final-normalised hidden state at
    /// the end-of-text token through the text projection. The end-of-text token is found as
    /// transformers does for SDXL's encoders (their configs keep the old `eos_token_id` 2):
    /// the position of the largest id, which is end-of-text (49407) in CLIP's vocabulary
    /// whether the prompt is padded with end-of-text or with `!`.
    pub fn penultimate_and_pooled(
        &self,
        ids: &Tensor,
        fixes: &[(usize, Tensor)],
    ) -> candle_core::Result<(Tensor, Tensor)> {
        let projection = self.projection.as_ref().ok_or_else(|| {
            candle_core::Error::Msg("this text encoder has no text projection".into())
        })?;
        let n = self.layers.len();
        let (batch, seq) = ids.dims2()?;
        let penultimate = self.run_layers(ids, fixes, n.saturating_sub(1))?;
        let last = match self.layers.last() {
            Some(layer) => {
                let mask = causal_mask(seq, penultimate.device(), penultimate.dtype())?;
                self.layer_forward(layer, &penultimate, &mask, batch, seq)?
            }
            None => penultimate.clone(),
        };
        let normed = self.final_norm.forward(&last)?;
        let rows: Vec<Vec<u32>> = ids.to_dtype(DType::U32)?.to_vec2()?;
        let pooled = rows
            .iter()
            .enumerate()
            .map(|(b, row)| {
                // The first position of the largest id (torch's argmax).
                let pos = row
                    .iter()
                    .enumerate()
                    .fold(
                        (0, 0u32),
                        |best, (i, &id)| if id > best.1 { (i, id) } else { best },
                    )
                    .0;
                normed.get(b)?.get(pos)?.unsqueeze(0)
            })
            .collect::<candle_core::Result<Vec<_>>>()?;
        let pooled = projection.forward(&Tensor::cat(&pooled, 0)?)?;
        Ok((penultimate, pooled))
    }

    /// The hidden states for token ids `(batch, seq)`: the last layer's output after the final
    /// layer norm when `skip` is 0 (diffusers' `last_hidden_state`); with `skip = n`, the
    /// output `n` layers earlier, also normalised (A1111's "Clip skip" n + 1). `fixes` put
    /// textual-inversion vectors in the place of placeholder tokens (see `run_layers`).
    pub fn forward(
        &self,
        ids: &Tensor,
        fixes: &[(usize, Tensor)],
        skip: usize,
    ) -> candle_core::Result<Tensor> {
        let run = self.layers.len().saturating_sub(skip).max(1);
        self.final_norm.forward(&self.run_layers(ids, fixes, run)?)
    }

    /// The width of the token embeddings (what an embedding's vectors must have).
    pub fn hidden_size(&self) -> usize {
        self.token_embedding.hidden_size()
    }

    fn layer_forward(
        &self,
        layer: &Layer,
        xs: &Tensor,
        mask: &Tensor,
        batch: usize,
        seq: usize,
    ) -> candle_core::Result<Tensor> {
        let hidden = xs.dim(D::Minus1)?;
        let head_dim = hidden / self.heads;
        let h = layer.norm1.forward(xs)?;
        let split = |t: Tensor| -> candle_core::Result<Tensor> {
            t.reshape((batch, seq, self.heads, head_dim))?
                .transpose(1, 2)?
                .contiguous()
        };
        let scale = (head_dim as f64).powf(-0.5);
        let q = split((layer.q.forward(&h)? * scale)?)?;
        let k = split(layer.k.forward(&h)?)?;
        let v = split(layer.v.forward(&h)?)?;
        let scores = q.matmul(&k.t()?)?.broadcast_add(mask)?;
        let probs = candle_nn::ops::softmax_last_dim(&scores)?;
        let attn = probs
            .matmul(&v)?
            .transpose(1, 2)?
            .reshape((batch, seq, hidden))?;
        let xs = (xs + layer.out.forward(&attn)?)?;
        let h = layer.norm2.forward(&xs)?;
        let h = layer
            .fc2
            .forward(&self.activation.apply(&layer.fc1.forward(&h)?)?)?;
        xs + h
    }
}

/// `rows` `(n, hidden)` written over `xs` `(batch, seq, hidden)` from position `at` of every
/// batch row; rows past the end are cut.
fn splice_rows(xs: &Tensor, at: usize, rows: &Tensor) -> candle_core::Result<Tensor> {
    let (batch, seq, _) = xs.dims3()?;
    if at >= seq {
        return Ok(xs.clone());
    }
    let n = rows.dim(0)?.min(seq - at);
    let rows = rows
        .narrow(0, 0, n)?
        .to_dtype(xs.dtype())?
        .unsqueeze(0)?
        .repeat((batch, 1, 1))?;
    let mut parts = vec![xs.narrow(1, 0, at)?, rows];
    if at + n < seq {
        parts.push(xs.narrow(1, at + n, seq - at - n)?);
    }
    Tensor::cat(&parts, 1)
}

/// The causal attention mask: 0 on and below the diagonal, −∞ above.
fn causal_mask(seq: usize, device: &Device, dtype: DType) -> candle_core::Result<Tensor> {
    let values: Vec<f32> = (0..seq)
        .flat_map(|i| (0..seq).map(move |j| if j > i { f32::NEG_INFINITY } else { 0.0 }))
        .collect();
    Tensor::from_vec(values, (seq, seq), device)?.to_dtype(dtype)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// With bf16 products every linear layer (and SDXL's projection) is held packed in bf16
    /// and the token embeddings in bf16; f32 keeps them all in f32.
    #[test]
    fn bf16_holds_every_linear_layer_packed() {
        let root = crate::test_util::fixtures().join("tiny-sdxl");
        for dir in ["text_encoder", "text_encoder_2"] {
            let dir = root.join(dir);
            let cfg: ClipFile = crate::model::config::read_json(&dir.join("config.json")).unwrap();
            let path = dir.join("model.safetensors");
            // SAFETY: a read-only test fixture.
            let vb =
                unsafe { VarBuilder::from_mmaped_safetensors(&[path], DType::F32, &Device::Cpu) }
                    .unwrap();
            let layers = |clip: &ClipText| -> Vec<bool> {
                let linears = clip
                    .layers
                    .iter()
                    .flat_map(|l| [&l.q, &l.k, &l.v, &l.out, &l.fc1, &l.fc2]);
                linears
                    .chain(&clip.projection)
                    .map(Linear::is_bf16)
                    .collect()
            };
            let bf16 = ClipText::with_compute(vb.clone(), &cfg, Compute::Bf16).unwrap();
            let f32 = ClipText::new(vb, &cfg).unwrap();
            assert!(layers(&bf16).iter().all(|&p| p));
            assert!(layers(&f32).iter().all(|&p| !p));
            let table = |c: &ClipText| c.token_embedding.embeddings().dtype();
            assert_eq!((table(&bf16), table(&f32)), (DType::BF16, DType::F32));
            let ids = Tensor::new(&[[49406u32, 320, 1125, 49407]], &Device::Cpu).unwrap();
            let (a, b) = (bf16.forward(&ids, &[], 0), f32.forward(&ids, &[], 0));
            let d = crate::test_util::max_abs_diff(&a.unwrap(), &b.unwrap());
            assert!(d < 0.05, "{d}");
            if bf16.has_projection() {
                let pooled = |c: &ClipText| c.penultimate_and_pooled(&ids, &[]).unwrap().1;
                let d = crate::test_util::max_abs_diff(&pooled(&bf16), &pooled(&f32));
                assert!(d < 0.05, "pooled: {d}");
            }
        }
    }
}
