//! Which model is loaded and which one the settings ask for: the load key (model, VAE,
//! LoRAs with their weights, ControlNet) that tells whether Run can reuse the loaded model:
//! another key means another load (on the loader's thread, see `launch.rs`).

use super::state::{Persisted, WantedKey};
use loopback_engine::load::request::ModelRequest;

/// Whether `persisted` names the model `loaded` was loaded for.
pub fn same_model(persisted: &Persisted, key: &str, device: &str) -> bool {
    persisted.device == device
        && persisted
            .model_request()
            .is_ok_and(|request| load_key(&request) == key)
}

/// What a model was loaded for: the model, the replacement VAE, the LoRAs with their
/// weights and the ControlNet (another of any of these means another load).
pub fn load_key(request: &ModelRequest) -> String {
    let loras: Vec<String> = request
        .loras
        .iter()
        .map(|l| format!("{}:{}", l.path.display(), l.weight))
        .collect();
    format!(
        "{}|vae={}|loras={}|controlnet={}|precision={}",
        request.spec,
        request
            .vae
            .as_ref()
            .map(|v| v.display().to_string())
            .unwrap_or_default(),
        loras.join(","),
        request.controlnet.as_deref().unwrap_or_default(),
        request.precision.label()
    )
}

/// Whether the load key `key` is of the model `persisted` names (whatever its VAE, LoRAs
/// or ControlNet): then the loaded model tells the family the chosen model has.
pub fn key_is_of_model(persisted: &Persisted, key: &str) -> bool {
    key.strip_prefix(persisted.model.trim())
        .is_some_and(|rest| rest.starts_with("|vae="))
}

/// Whether the loaded model (`key`, `device`) is the one `persisted` asks for, as
/// [`same_model`] tells, with the key `persisted` asks for remembered in `wanted`: the
/// prompt's `<lora:…>` tags are looked up in the folders again only when the model, VAE,
/// LoRAs, prompt or ControlNet changed (or after a rescan), not on every frame.
pub fn is_wanted(persisted: &Persisted, wanted: &WantedKey, key: &str, device: &str) -> bool {
    persisted.device == device
        && wanted
            .get(persisted, |persisted| {
                persisted
                    .model_request()
                    .ok()
                    .map(|request| load_key(&request))
            })
            .is_some_and(|wanted| wanted == key)
}
