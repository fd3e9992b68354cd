//! A loaded model's text encoders, a cache of what they computed, and their release once a
//! one-shot run has encoded its prompts.
//!
//! Every loop of a run conditions on the same prompts, so the encoders' outputs are cached
//! per 77-token chunk (its ids, weights, embeddings and the clip skip) and each chunk is
//! encoded once per run. A run that serves one request and
//! ends (the CLI's `run`) can then free the encoders' weights after the first loop — 0.46 GiB
//! for SD 1.5 in f32, 3 GiB for SDXL's two — which lowers the peak of the larger loops. The
//! app keeps them, since its next run may bring a new prompt.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, RwLock};

use candle_core::Tensor;

use crate::model::clip::ClipText;
use loopback_core::{Error, Result};

/// Chunk outputs kept in the cache at most (the oldest goes first). Every loop of a run
/// encodes the same chunks, and a one-shot run frees the encoders after the first loop, so the
/// cache must hold every distinct chunk of a run's prompts: their scheduled texts (prompt
/// editing, alternation) times their chunks. 128 chunks are at most 30 MB (SD 1.x, f32) or
/// 80 MB (SDXL).
const CACHE_ENTRIES: usize = 128;

/// What identifies one chunk's output: its ids, its multipliers' bits and its embeddings.
type ChunkKey = (Vec<u32>, Vec<u32>, Vec<(usize, String)>);

/// The chunks for the first and (SDXL) the second encoder, and the clip skip.
type Key = (Vec<ChunkKey>, Option<Vec<ChunkKey>>, usize);

/// A textual-inversion embedding's vectors for one text encoder, at a chunk position.
#[derive(Debug, Clone)]
pub struct Fix {
    /// Index of the first placeholder token in the chunk, not counting the start token.
    pub offset: usize,
    /// What names the vectors in the cache (the embedding's name and file hash).
    pub key: String,
    /// The vectors, `(n, hidden)`.
    pub vectors: Tensor,
}

/// One 77-token chunk as a text encoder takes it (A1111's `PromptChunk`).
#[derive(Debug, Clone)]
pub struct EncoderChunk {
    /// The 77 token ids.
    pub ids: Vec<u32>,
    /// The emphasis weight of each token (all 1: no emphasis).
    pub multipliers: Vec<f32>,
    /// Embeddings in the chunk.
    pub fixes: Vec<Fix>,
}

impl EncoderChunk {
    /// A chunk of plain ids: weight 1, no embeddings.
    pub fn plain(ids: &[u32]) -> Self {
        EncoderChunk {
            ids: ids.to_vec(),
            multipliers: vec![1.0; ids.len()],
            fixes: Vec::new(),
        }
    }

    fn key(&self) -> ChunkKey {
        (
            self.ids.clone(),
            self.multipliers.iter().map(|m| m.to_bits()).collect(),
            self.fixes
                .iter()
                .map(|f| (f.offset, f.key.clone()))
                .collect(),
        )
    }

    /// The fixes as the encoder takes them.
    pub fn fix_tensors(&self) -> Vec<(usize, Tensor)> {
        self.fixes
            .iter()
            .map(|f| (f.offset, f.vectors.clone()))
            .collect()
    }
}

/// The context and (SDXL) the pooled embedding.
pub type Encoded = (Tensor, Option<Tensor>);

/// The first and (SDXL) the second text encoder.
#[derive(Debug)]
struct Encoders {
    clip: ClipText,
    clip2: Option<ClipText>,
}

/// Text encoders that can be released, with a cache of their outputs.
#[derive(Debug)]
pub struct TextEncoders {
    loaded: RwLock<Option<Encoders>>,
    cache: Mutex<Vec<(Key, Encoded)>>,
    release_after_use: AtomicBool,
    sdxl: bool,
}

impl TextEncoders {
    /// Wraps the encoders (SDXL when there is a second one).
    pub fn new(clip: ClipText, clip2: Option<ClipText>) -> Self {
        TextEncoders {
            sdxl: clip2.is_some(),
            loaded: RwLock::new(Some(Encoders { clip, clip2 })),
            cache: Mutex::new(Vec::new()),
            release_after_use: AtomicBool::new(false),
        }
    }

    /// Whether there are two encoders (SDXL), loaded or released.
    pub fn is_sdxl(&self) -> bool {
        self.sdxl
    }

    /// Whether the weights are still loaded.
    pub fn is_loaded(&self) -> bool {
        self.loaded.read().map(|l| l.is_some()).unwrap_or(false)
    }

    /// The cached output for `chunks` (and `chunks_2`) at clip skip `skip`, or `encode`'s on
    /// the encoders, cached.
    pub fn get_or_encode(
        &self,
        chunks: &[EncoderChunk],
        chunks_2: Option<&[EncoderChunk]>,
        skip: usize,
        encode: impl FnOnce(&ClipText, Option<&ClipText>) -> Result<Encoded>,
    ) -> Result<Encoded> {
        let keys = |c: &[EncoderChunk]| c.iter().map(EncoderChunk::key).collect::<Vec<_>>();
        let key: Key = (keys(chunks), chunks_2.map(keys), skip);
        if let Some((_, hit)) = self.lock_cache()?.iter().find(|(k, _)| *k == key) {
            return Ok(hit.clone());
        }
        let encoded = self.with(|clip, clip2| encode(clip, clip2))??;
        let mut cache = self.lock_cache()?;
        if cache.len() >= CACHE_ENTRIES {
            cache.remove(0);
        }
        cache.push((key, encoded.clone()));
        Ok(encoded)
    }

    /// Runs `f` on the loaded encoders; an error once they are released.
    pub fn with<R>(&self, f: impl FnOnce(&ClipText, Option<&ClipText>) -> R) -> Result<R> {
        let loaded = self
            .loaded
            .read()
            .map_err(|_| Error::Engine("text encoders: a thread panicked".into()))?;
        match loaded.as_ref() {
            Some(e) => Ok(f(&e.clip, e.clip2.as_ref())),
            None => Err(Error::Engine(
                "the text encoders were freed after this run's prompts were encoded; \
                 a new prompt needs the model loaded again"
                    .into(),
            )),
        }
    }

    /// Frees the encoders' weights; cached outputs stay usable.
    pub fn release(&self) {
        if let Ok(mut loaded) = self.loaded.write() {
            *loaded = None;
        }
    }

    /// Whether [`TextEncoders::prompts_encoded`] releases the encoders (for a model that
    /// serves one run with fixed prompts).
    pub fn set_release_after_use(&self, release: bool) {
        self.release_after_use.store(release, Ordering::SeqCst);
    }

    /// Called once a run's prompts are encoded (and cached): releases the encoders when
    /// [`TextEncoders::set_release_after_use`] asked for it.
    pub fn prompts_encoded(&self) {
        if self.release_after_use.load(Ordering::SeqCst) {
            self.release();
        }
    }

    fn lock_cache(&self) -> Result<std::sync::MutexGuard<'_, Vec<(Key, Encoded)>>> {
        self.cache
            .lock()
            .map_err(|_| Error::Engine("text encoder cache: a thread panicked".into()))
    }
}
