//! The samplers, as schedulers equivalent to diffusers': DDIM (eta 0), Euler, Euler ancestral,
//! Heun,
//! DPM-Solver++ 2M and its SDE variant, DPM++ SDE, UniPC and LCM, on A1111's schedule types (Karras, exponential, the model's spacing,
//! SGM Uniform), with img2img strength handling.
//!
//! # Why not candle's schedulers
//! candle-transformers 0.11's schedulers deviate from diffusers: they have no `set_timesteps`,
//! `trailing` spacing yields `n + 1` steps when `n` does not divide 1000, `linspace` truncates
//! instead of rounding, `betas_for_alpha_bar` uses integer division (breaking
//! `squaredcos_cap_v2`), DPM-Solver++ is missing and Euler ancestral bails on `sample`
//! prediction. So the schedulers are written here, after diffusers 0.42's
//! `DDIMScheduler`, `EulerAncestralDiscreteScheduler` and `DPMSolverMultistepScheduler`.
//!
//! # Design
//! Every update is a linear combination of the sample, the model output, earlier outputs and
//! noise. The schedulers compute the scalar coefficients, in float32 where diffusers uses torch
//! float32 scalars and float64 where it uses NumPy, and apply them through
//! [`SchedulerTensor`], which the engine implements for its tensor type (here: `Vec<f32>`,
//! for tests). Parity with diffusers is tested against fixtures from
//! `tools/parity/schedulers.py`.
//!
//! # Use (img2img, as `StableDiffusionImg2ImgPipeline`)
//! ```
//! use crate::scheduler::{build, Scheduler, SchedulerConfig};
//! use loopback_core::settings::{Sampler, ScheduleType};
//!
//! # fn main() -> loopback_core::Result<()> {
//! let config = SchedulerConfig::from_json(r#"{"beta_schedule": "scaled_linear",
//!     "beta_start": 0.00085, "beta_end": 0.012, "steps_offset": 1}"#)?;
//! let mut scheduler = build::<Vec<f32>>(Sampler::EulerA, ScheduleType::Automatic, &config, 30)?;
//! let run = scheduler.img2img(0.5)?; // the last 15 of the 30 steps
//! let (latents, noise) = (vec![0.1f32; 16], vec![0.5f32; 16]);
//! let mut sample = scheduler.add_noise(&latents, &noise, run.start)?;
//! for i in run {
//!     let input = scheduler.scale_model_input(&sample, i)?;
//!     let t = scheduler.timesteps()[i]; // the UNet's timestep
//!     let output: Vec<f32> = input.iter().map(|x| 0.1 * x + t as f32 * 1e-5).collect();
//!     sample = scheduler.step(&output, i, &sample, &mut |like: &Vec<f32>| Ok(vec![0.0; like.len()]))?;
//! }
//! # Ok(())
//! # }
//! ```

mod alphas;
mod config;
mod ddim;
mod dpm_sde;
mod dpm_solver;
mod euler;
mod heun;
mod interface;
mod lcm;
pub mod noise;
mod sigmas;
mod timesteps;
mod unipc;

pub use config::{
    BetaSchedule, FinalSigmas, PredictionType, SchedulerConfig, SolverType, TimestepSpacing,
};
pub use ddim::Ddim;
pub use dpm_sde::DpmSde;
pub use dpm_solver::DpmSolverMultistep;
pub use euler::Euler;
pub use heun::Heun;
pub use interface::{NoiseSource, Scheduler, SchedulerTensor, img2img_start};
pub use lcm::Lcm;
pub use unipc::UniPc;

use loopback_core::Result;
use loopback_core::settings::{Sampler, ScheduleType};

/// Builds `sampler` on `schedule` (A1111's schedule type; `Automatic` resolved as A1111 does,
/// [`Sampler::schedule`]) for a model whose scheduler config is `config`, with `steps`
/// inference steps, as `XScheduler.from_config(pipe.scheduler.config, ...)` then
/// `set_timesteps(steps)` in diffusers: the betas, prediction type, spacing and offset come
/// from the config, missing keys take the sampler class's defaults; Karras sets
/// `use_karras_sigmas = true`, Exponential `use_exponential_sigmas = true`, SGM Uniform
/// `timestep_spacing = "trailing"`; DPM++ 2M is `algorithm_type = "dpmsolver++"`,
/// `solver_order = 2` (SDE: `"sde-dpmsolver++"`). DDIM and LCM have no sigmas: LCM ignores
/// the schedule; it takes the config's spacing, or `trailing` for
/// SGM Uniform, and ignores Karras and exponential.
pub fn build<T>(
    sampler: Sampler,
    schedule: ScheduleType,
    config: &SchedulerConfig,
    steps: usize,
) -> Result<Box<dyn Scheduler<T> + Send>>
where
    T: SchedulerTensor + Send + 'static,
{
    let schedule = sampler.schedule(schedule);
    Ok(match sampler {
        Sampler::Ddim if schedule == ScheduleType::SgmUniform => {
            let config = SchedulerConfig {
                timestep_spacing: Some(TimestepSpacing::Trailing),
                ..config.clone()
            };
            Box::new(Ddim::new(&config, steps)?)
        }
        Sampler::Ddim => Box::new(Ddim::new(config, steps)?),
        Sampler::Euler => Box::new(Euler::new(config, steps, schedule, false)?),
        Sampler::EulerA => Box::new(Euler::new(config, steps, schedule, true)?),
        Sampler::DpmPp2m | Sampler::DpmPp2mKarras => Box::new(DpmSolverMultistep::<T>::new(
            config, steps, schedule, false,
        )?),
        Sampler::DpmPp2mSde => {
            Box::new(DpmSolverMultistep::<T>::new(config, steps, schedule, true)?)
        }
        Sampler::Heun => Box::new(Heun::<T>::new(config, steps, schedule)?),
        Sampler::DpmPpSde => Box::new(DpmSde::<T>::new(config, steps, schedule)?),
        Sampler::UniPc => Box::new(UniPc::<T>::new(config, steps, schedule)?),
        Sampler::Lcm => Box::new(Lcm::new(config, steps)?),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn img2img_start_follows_diffusers() {
        assert_eq!(img2img_start(30, 0.5).ok(), Some(15));
        assert_eq!(img2img_start(10, 0.35).ok(), Some(7));
        assert_eq!(img2img_start(10, 0.7).ok(), Some(3)); // int(7.000000000000001) = 7
        assert_eq!(img2img_start(4, 0.2).ok(), Some(4));
        assert_eq!(img2img_start(4, 1.0).ok(), Some(0));
        assert!(img2img_start(4, 1.5).is_err());
        assert!(img2img_start(4, f64::NAN).is_err());
    }

    #[test]
    fn lin_comb_checks_its_terms() {
        let a = vec![1.0f32, 2.0];
        let b = vec![3.0f32, 4.0];
        assert_eq!(
            Vec::lin_comb(&[(2.0, &a), (-1.0, &b)]).ok(),
            Some(vec![-1.0, 0.0])
        );
        assert!(Vec::<f32>::lin_comb(&[]).is_err());
        assert!(Vec::lin_comb(&[(1.0, &a), (1.0, &vec![1.0f32])]).is_err());
        assert_eq!(b.clamp(0.0, 3.5).ok(), Some(vec![3.0, 3.5]));
    }
}
