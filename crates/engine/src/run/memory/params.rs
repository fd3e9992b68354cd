//! Parameter counts of the three networks, computed from their configs (exact for the
//! diffusers models the engine builds): the weights part of every estimate.

use crate::model::config::{ClipFile, PerBlock, UNetFile, VaeFile};

fn conv3(cin: usize, cout: usize) -> u64 {
    (cin * cout * 9 + cout) as u64
}
fn conv1(cin: usize, cout: usize) -> u64 {
    (cin * cout + cout) as u64
}
fn norm(c: usize) -> u64 {
    2 * c as u64
}
fn resnet(cin: usize, cout: usize) -> u64 {
    norm(cin)
        + conv3(cin, cout)
        + norm(cout)
        + conv3(cout, cout)
        + if cin != cout { conv1(cin, cout) } else { 0 }
}

/// Parameters of a VAE (exact for the diffusers `AutoencoderKL` the engine builds).
pub fn vae_parameters(cfg: &VaeFile) -> u64 {
    let ch = &cfg.block_out_channels;
    let Some(&last) = ch.last() else { return 0 };
    let lat = cfg.latent_channels;
    let mid = 2 * resnet(last, last) + norm(last) + 4 * conv1(last, last);
    let mut enc = conv3(cfg.in_channels, ch[0]) + mid + norm(last) + conv3(last, 2 * lat);
    for (i, &c) in ch.iter().enumerate() {
        let cin = if i == 0 { ch[0] } else { ch[i - 1] };
        enc += resnet(cin, c) + (cfg.layers_per_block as u64 - 1) * resnet(c, c);
        if i + 1 < ch.len() {
            enc += conv3(c, c);
        }
    }
    let rev: Vec<usize> = ch.iter().rev().copied().collect();
    let mut dec = conv3(lat, last) + mid + norm(ch[0]) + conv3(ch[0], cfg.out_channels);
    for (i, &c) in rev.iter().enumerate() {
        let cin = if i == 0 { rev[0] } else { rev[i - 1] };
        dec += resnet(cin, c) + cfg.layers_per_block as u64 * resnet(c, c);
        if i + 1 < rev.len() {
            dec += conv3(c, c);
        }
    }
    let quant = if cfg.use_quant_conv {
        conv1(2 * lat, 2 * lat)
    } else {
        0
    };
    let post = if cfg.use_post_quant_conv {
        conv1(lat, lat)
    } else {
        0
    };
    enc + dec + quant + post
}

/// Parameters of a CLIP text encoder (with its text projection when the config has a
/// `projection_dim`, as SDXL's second encoder).
pub fn clip_parameters(cfg: &ClipFile) -> u64 {
    let h = cfg.hidden_size as u64;
    let i = cfg.intermediate_size as u64;
    let layer = 2 * 2 * h + 4 * (h * h + h) + (h * i + i) + (i * h + h);
    (cfg.vocab_size as u64 + cfg.max_position_embeddings as u64) * h
        + cfg.num_hidden_layers as u64 * layer
        + 2 * h
        + cfg.projection_dim.map_or(0, |p| p as u64 * h)
}

/// What the UNet's parameter count is made of: its encoder (time and added embeddings,
/// `conv_in`, down and mid blocks: also a ControlNet's) and the rest.
struct UnetParts {
    encoder: u64,
    decoder: u64,
}

/// Parameters of a UNet (the diffusers `UNet2DConditionModel` layouts the engine supports).
pub fn unet_parameters(cfg: &UNetFile) -> u64 {
    let parts = unet_parts(cfg);
    parts.encoder + parts.decoder
}

/// The channels of every skip connection of the UNet's encoder, with its resolution level
/// (0: the latents' size, each level a quarter of the pixels).
pub(super) fn skip_channels(cfg: &UNetFile) -> Vec<(usize, usize)> {
    let ch = &cfg.block_out_channels;
    let Some(&first) = ch.first() else {
        return Vec::new();
    };
    let mut out = vec![(first, 0)];
    for (i, &c) in ch.iter().enumerate() {
        out.extend(std::iter::repeat_n((c, i), cfg.layers_per_block));
        if i + 1 < ch.len() {
            out.push((c, i + 1));
        }
    }
    out
}

/// Parameters of a ControlNet for a model with this UNet config: the UNet's encoder, the
/// conditioning embedding of every released ControlNet (widths 16, 32, 96, 256) and the zero
/// convolutions of every skip connection and of the mid block.
pub fn controlnet_parameters(cfg: &UNetFile) -> u64 {
    let ch = &cfg.block_out_channels;
    let (Some(&first), Some(&last)) = (ch.first(), ch.last()) else {
        return 0;
    };
    let widths = [16, 32, 96, 256];
    let mut embedding = conv3(3, widths[0]) + conv3(widths[3], first);
    for pair in widths.windows(2) {
        embedding += conv3(pair[0], pair[0]) + conv3(pair[0], pair[1]);
    }
    let zero: u64 = skip_channels(cfg).iter().map(|&(c, _)| conv1(c, c)).sum();
    unet_parts(cfg).encoder + embedding + zero + conv1(last, last)
}

fn unet_parts(cfg: &UNetFile) -> UnetParts {
    let ch = &cfg.block_out_channels;
    let n = ch.len();
    if n == 0 {
        return UnetParts {
            encoder: 0,
            decoder: 0,
        };
    }
    let temb = 4 * ch[0];
    let d = cfg.cross_attention_dim;
    let layers = |i: usize| match &cfg.transformer_layers_per_block {
        Some(PerBlock::One(v)) => *v,
        Some(PerBlock::Each(v)) => v.get(i).copied().unwrap_or(1),
        None => 1,
    } as u64;
    let res = |cin: usize, cout: usize| resnet(cin, cout) + (temb * cout + cout) as u64;
    let transformer = |c: usize, depth: u64| {
        let c64 = c as u64;
        let block = 3 * 2 * c64
            + (3 * c64 * c64 + c64 * c64 + c64)
            + (c64 * c64 + 2 * d as u64 * c64 + c64 * c64 + c64)
            + (c64 * 8 * c64 + 8 * c64)
            + (4 * c64 * c64 + c64);
        norm(c) + 2 * (c64 * c64 + c64) + depth * block
    };
    let cross = |kind: &str| kind.starts_with("CrossAttn");
    // SDXL's added embedding MLP.
    let added = match (
        cfg.addition_embed_type.as_deref(),
        cfg.projection_class_embeddings_input_dim,
    ) {
        (Some("text_time"), Some(input)) => (input * temb + temb + temb * temb + temb) as u64,
        _ => 0,
    };
    let mut total =
        (ch[0] * temb + temb + temb * temb + temb) as u64 + added + conv3(cfg.in_channels, ch[0]);
    for i in 0..n {
        let cin = if i == 0 { ch[0] } else { ch[i - 1] };
        for j in 0..cfg.layers_per_block {
            total += res(if j == 0 { cin } else { ch[i] }, ch[i]);
            if cfg.down_block_types.get(i).is_some_and(|k| cross(k)) {
                total += transformer(ch[i], layers(i));
            }
        }
        if i + 1 < n {
            total += conv3(ch[i], ch[i]);
        }
    }
    total += 2 * res(ch[n - 1], ch[n - 1]) + transformer(ch[n - 1], layers(n - 1));
    let encoder = total;
    total = norm(ch[0]) + conv3(ch[0], cfg.out_channels);
    let rev: Vec<usize> = ch.iter().rev().copied().collect();
    for i in 0..n {
        let prev = if i == 0 { rev[0] } else { rev[i - 1] };
        let input = rev[(i + 1).min(n - 1)];
        for j in 0..=cfg.layers_per_block {
            let skip = if j == cfg.layers_per_block {
                input
            } else {
                rev[i]
            };
            let cin = if j == 0 { prev } else { rev[i] };
            total += res(cin + skip, rev[i]);
            if cfg.up_block_types.get(i).is_some_and(|k| cross(k)) {
                total += transformer(rev[i], layers(n - 1 - i));
            }
        }
        if i + 1 < n {
            total += conv3(rev[i], rev[i]);
        }
    }
    UnetParts {
        encoder,
        decoder: total,
    }
}
