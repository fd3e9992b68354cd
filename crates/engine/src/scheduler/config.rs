//! A model's `scheduler/scheduler_config.json`, as diffusers writes it.
//!
//! Every key is optional: a missing key (or `null`) takes the default of the scheduler class
//! being built, as `XScheduler.from_config(pipe.scheduler.config)` does in diffusers (it drops
//! the keys the original config only held as defaults). Unknown keys are ignored.

use std::path::Path;

use serde::Deserialize;

use loopback_core::{Error, Result};

/// How the betas (the per-step noise variances of training) are laid out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum BetaSchedule {
    /// Evenly spaced from `beta_start` to `beta_end`.
    #[serde(rename = "linear")]
    Linear,
    /// Evenly spaced square roots, squared (Stable Diffusion).
    #[serde(rename = "scaled_linear")]
    ScaledLinear,
    /// The cosine schedule of improved DDPM, capped at 0.999.
    #[serde(rename = "squaredcos_cap_v2")]
    SquaredCosCapV2,
}

/// What the model predicts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum PredictionType {
    /// The noise (SD 1.x, SDXL).
    #[serde(rename = "epsilon")]
    Epsilon,
    /// The velocity `alpha * noise - sigma * sample` (SD 2.x 768).
    #[serde(rename = "v_prediction")]
    VPrediction,
    /// The denoised sample itself.
    #[serde(rename = "sample")]
    Sample,
}

/// How the inference timesteps are spread over the training timesteps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum TimestepSpacing {
    /// Multiples of `num_train_timesteps / steps` from 0, plus `steps_offset`.
    #[serde(rename = "leading")]
    Leading,
    /// Evenly spaced from `num_train_timesteps - 1` down to 0.
    #[serde(rename = "linspace")]
    Linspace,
    /// Multiples of `num_train_timesteps / steps` down from `num_train_timesteps`, minus 1.
    #[serde(rename = "trailing")]
    Trailing,
}

/// The noise level DPM-Solver ends on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum FinalSigmas {
    /// Zero: the last step returns the denoised prediction.
    #[serde(rename = "zero")]
    Zero,
    /// The smallest training sigma.
    #[serde(rename = "sigma_min")]
    SigmaMin,
}

/// DPM-Solver's second-order formula.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum SolverType {
    /// The midpoint formula (diffusers' default).
    #[serde(rename = "midpoint")]
    Midpoint,
    /// Heun's formula.
    #[serde(rename = "heun")]
    Heun,
}

/// The keys of diffusers' `scheduler_config.json` that the schedulers here use; `None` means
/// missing (or `null`), i.e. the default of the class being built.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default)]
pub struct SchedulerConfig {
    /// The scheduler class the model was published with, e.g. `PNDMScheduler`.
    #[serde(rename = "_class_name")]
    pub class_name: Option<String>,
    /// Training timesteps (default 1000).
    pub num_train_timesteps: Option<usize>,
    /// First beta (default 0.0001).
    pub beta_start: Option<f64>,
    /// Last beta (default 0.02).
    pub beta_end: Option<f64>,
    /// Beta layout (default `linear`).
    pub beta_schedule: Option<BetaSchedule>,
    /// Explicit betas, overriding the three keys above.
    pub trained_betas: Option<Vec<f64>>,
    /// Model prediction (default `epsilon`).
    pub prediction_type: Option<PredictionType>,
    /// Timestep spacing (default `leading` for DDIM, `linspace` for Euler and DPM-Solver).
    pub timestep_spacing: Option<TimestepSpacing>,
    /// Added to `leading` timesteps (default 0).
    pub steps_offset: Option<usize>,
    /// DDIM: whether the step after the last uses an alpha product of 1 (default true).
    pub set_alpha_to_one: Option<bool>,
    /// DDIM: whether the predicted sample is clamped (default true).
    pub clip_sample: Option<bool>,
    /// DDIM: the clamp's bound (default 1.0).
    pub clip_sample_range: Option<f64>,
    /// DPM-Solver: the last sigma (default `zero`).
    pub final_sigmas_type: Option<FinalSigmas>,
    /// DPM-Solver: Karras sigmas; the DPM++ 2M Karras sampler always sets it.
    pub use_karras_sigmas: Option<bool>,
    /// DPM-Solver: first-order final steps below 15 steps (default true).
    pub lower_order_final: Option<bool>,
    /// DPM-Solver: first-order final step always (default false).
    pub euler_at_final: Option<bool>,
    /// DPM-Solver: second-order formula (default `midpoint`).
    pub solver_type: Option<SolverType>,
    /// Karras sigmas: lower end instead of the smallest training sigma.
    pub sigma_min: Option<f64>,
    /// Karras sigmas: upper end instead of the largest training sigma.
    pub sigma_max: Option<f64>,
    /// LCM: the step count of the distillation schedule its timesteps are taken from
    /// (default 50).
    pub original_inference_steps: Option<usize>,
    /// LCM: the timestep's scale in the boundary conditions (default 10).
    pub timestep_scaling: Option<f64>,
    /// Dynamic thresholding; not supported (refused when true).
    pub thresholding: Option<bool>,
    /// Zero-terminal-SNR rescaling; not supported (refused when true).
    pub rescale_betas_zero_snr: Option<bool>,
}

impl SchedulerConfig {
    /// Parses the text of a `scheduler_config.json`.
    pub fn from_json(text: &str) -> Result<Self> {
        serde_json::from_str(text)
            .map_err(|e| Error::Metadata(format!("not a valid scheduler_config.json: {e}")))
    }

    /// Reads and parses a `scheduler_config.json`.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::input(path, format!("cannot read the scheduler config: {e}")))?;
        serde_json::from_str(&text)
            .map_err(|e| Error::input(path, format!("not a valid scheduler config: {e}")))
    }

    /// The number of training timesteps.
    pub fn train_timesteps(&self) -> usize {
        self.num_train_timesteps.unwrap_or(1000)
    }

    /// The prediction type (all three schedulers default to epsilon).
    pub fn prediction(&self) -> PredictionType {
        self.prediction_type.unwrap_or(PredictionType::Epsilon)
    }

    /// Refuses the options that change the arithmetic but are not implemented.
    pub(crate) fn check_supported(&self) -> Result<()> {
        let refuse = |key: &str| {
            Err(Error::Metadata(format!(
                "scheduler config: {key} = true is not supported"
            )))
        };
        if self.thresholding == Some(true) {
            return refuse("thresholding");
        }
        if self.rescale_betas_zero_snr == Some(true) {
            return refuse("rescale_betas_zero_snr");
        }
        if self.train_timesteps() < 2 {
            return Err(Error::Metadata(
                "scheduler config: num_train_timesteps must be at least 2".into(),
            ));
        }
        if let Some(betas) = &self.trained_betas
            && betas.len() != self.train_timesteps()
        {
            return Err(Error::Metadata(format!(
                "scheduler config: trained_betas has {} values, not num_train_timesteps = {}",
                betas.len(),
                self.train_timesteps()
            )));
        }
        Ok(())
    }
}
