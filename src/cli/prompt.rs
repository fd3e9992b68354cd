//! `loopback-scaler prompt`: how the app reads a prompt, as A1111 reads it.

use std::path::PathBuf;

use serde_json::{Value, json};

use loopback_engine::conditioning::encode::ModelEmbeddings;
use loopback_engine::conditioning::prompt::{EmbeddingIndex, ReadPrompt};
use loopback_engine::conditioning::tokenizer::ClipTokenizer;
use loopback_engine::load::embeddings::{Embeddings, search_dirs};
use loopback_engine::load::{lora, resolve};
use loopback_engine::run::memory::ModelShape;

/// Arguments of `prompt`.
#[derive(Debug, clap::Args)]
pub struct PromptArgs {
    /// The prompt (A1111's prompt language; `<lora:…>` tags are set aside).
    text: String,
    /// Scheduled sampling steps, for prompt editing and alternation.
    #[arg(long, default_value_t = 20)]
    steps: usize,
    /// A model (preset, folder, file or name in ./models): also shows the chunks' tokens,
    /// weights and the embeddings used, for that model's text encoders.
    #[arg(long, value_name = "MODEL")]
    model: Option<String>,
    /// A folder of textual-inversion embeddings, besides ./models/embeddings and
    /// ./embeddings; repeatable.
    #[arg(long = "embeddings-dir", value_name = "DIR")]
    embeddings_dirs: Vec<PathBuf>,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
}

/// Runs `prompt`.
pub fn run(args: &PromptArgs) -> anyhow::Result<()> {
    let (text, tags) = lora::split_prompt(&args.text)?;
    let tokenizer = ClipTokenizer::bundled()?;
    let mut warnings = Vec::new();
    let index = match &args.model {
        Some(spec) => {
            let shape = ModelShape::resolve(spec, &resolve::default_search_dirs())?;
            let embeddings = Embeddings::scan(&search_dirs(&args.embeddings_dirs));
            warnings.extend(embeddings.warnings.iter().cloned());
            let usable = ModelEmbeddings::new(
                &tokenizer,
                &embeddings,
                shape.clip.hidden_size,
                shape.clip2.as_ref().map(|c| c.hidden_size),
            );
            for (name, family) in &usable.skipped {
                warnings.push(format!("embedding {name} is for {family}, not this model"));
            }
            usable.index
        }
        None => EmbeddingIndex::default(),
    };
    let read = ReadPrompt::new(&tokenizer, &text, args.steps, &index);
    let report = report(&tokenizer, &read, &index, args.model.is_some(), &tags);
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        print_text(&report);
    }
    for warning in warnings {
        eprintln!("warning: {warning}");
    }
    Ok(())
}

/// The reading as JSON: `attention` and `schedule` as A1111's parser returns them (for the
/// prompt as written and the schedule's texts), the token counter, and with a model the
/// chunks of every scheduled text.
fn report(
    tokenizer: &ClipTokenizer,
    read: &ReadPrompt,
    index: &EmbeddingIndex,
    with_chunks: bool,
    tags: &[lora::LoraTag],
) -> Value {
    let first = &read.texts[0];
    let (count, length) = read.token_counter();
    let mut out = json!({
        "attention": first.attention.iter().map(|(t, w)| json!([t, w])).collect::<Vec<_>>(),
        "schedule": read.texts.iter().map(|t| json!([t.end_at_step, t.text])).collect::<Vec<_>>(),
        "tokens": count,
        "token_counter": format!("{count}/{length}"),
        "loras": tags.iter().map(|t| json!([t.name, t.weight])).collect::<Vec<_>>(),
    });
    if read.texts.len() > 1 {
        // Every scheduled text's own emphasis reading.
        out["attention_per_step"] = read
            .texts
            .iter()
            .map(|t| {
                json!([
                    t.end_at_step,
                    t.attention
                        .iter()
                        .map(|(s, w)| json!([s, w]))
                        .collect::<Vec<_>>()
                ])
            })
            .collect();
    }
    if with_chunks {
        out["chunks"] = read
            .texts
            .iter()
            .map(|t| {
                json!({
                    "end_at_step": t.end_at_step,
                    "chunks": t.chunked.chunks.iter().map(|c| json!({
                        "tokens": c.tokens,
                        "text": c.tokens.iter().map(|&id| tokenizer.decode(&[id])).collect::<Vec<_>>(),
                        "weights": c.multipliers,
                        "embeddings": c.fixes.iter().map(|&(at, i)| json!([at, index.name(i)])).collect::<Vec<_>>(),
                    })).collect::<Vec<_>>(),
                })
            })
            .collect();
        out["embeddings"] = json!(read.embeddings_used(index));
    }
    out
}

/// The reading as text lines.
fn print_text(report: &Value) {
    println!("tokens: {}", report["token_counter"].as_str().unwrap_or(""));
    // Texts are quoted, so that their spaces show.
    println!("emphasis:");
    for piece in report["attention"].as_array().into_iter().flatten() {
        println!("  {:>8}  {}", fmt_weight(&piece[1]), piece[0]);
    }
    println!("schedule:");
    for entry in report["schedule"].as_array().into_iter().flatten() {
        println!("  up to step {:>3}: {}", entry[0], entry[1]);
    }
    if let Some(texts) = report["chunks"].as_array() {
        for text in texts {
            let chunks = text["chunks"].as_array().map_or(0, Vec::len);
            println!("chunks up to step {}: {chunks}", text["end_at_step"]);
            for (i, chunk) in text["chunks"].as_array().into_iter().flatten().enumerate() {
                let pieces: Vec<String> = chunk["text"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .zip(chunk["weights"].as_array().into_iter().flatten())
                    .map(|(t, w)| match w.as_f64() {
                        Some(w) if w != 1.0 => format!("{}({w:.3})", t.as_str().unwrap_or("")),
                        _ => t.as_str().unwrap_or("").to_string(),
                    })
                    .collect();
                println!("  chunk {}: {}", i + 1, pieces.join(" "));
            }
        }
        if let Some(names) = report["embeddings"].as_array().filter(|n| !n.is_empty()) {
            let names: Vec<&str> = names.iter().filter_map(Value::as_str).collect();
            println!("embeddings: {}", names.join(", "));
        }
    }
    if let Some(loras) = report["loras"].as_array().filter(|l| !l.is_empty()) {
        let loras: Vec<String> = loras.iter().map(|l| format!("{}:{}", l[0], l[1])).collect();
        println!("loras: {}", loras.join(", "));
    }
}

/// A weight as Python prints it (`1.1`, `-1.0`).
fn fmt_weight(w: &Value) -> String {
    w.as_f64().map_or_else(String::new, |w| {
        let s = w.to_string();
        if s.contains(['.', 'e']) {
            s
        } else {
            format!("{s}.0")
        }
    })
}
