//! Where models come from and how they become a [`open::LoadedModel`]:
//! - [`resolve`]: which model `--model PRESET|PATH|NAME` means (preset, folder, file in `models/`);
//! - [`hub`]: built-in presets fetched into the standard Hugging Face cache;
//! - [`library`]: the models, VAEs, LoRAs and TAESD decoders on disk, with family and size;
//! - [`checkpoint`]: single-file checkpoints (original layout) and replacement VAEs;
//! - [`controlnet`]: ControlNets (diffusers folders, single files in the original layout);
//! - [`embeddings`]: textual-inversion embeddings, found by name in prompts;
//! - [`weights`]: safetensors weights read per tensor on demand, renamed and derived; hashes;
//! - [`lora`]: LoRA files merged into the weights as they load, and `<lora:…>` prompt tags;
//! - [`taesd`]: where the TAESD preview decoder's weights are found;
//! - [`open`]: a loaded model from a folder or checkpoint, with a replacement VAE and hashes;
//! - [`request`]: a model request resolved, fetched and loaded, with progress events.

pub mod checkpoint;
pub mod controlnet;
pub mod embeddings;
pub mod hub;
pub mod library;
pub mod lora;
pub mod open;
pub mod request;
pub mod resolve;
pub mod taesd;
pub mod weights;
