#!/usr/bin/env python3
"""Golden fixtures for the img2img schedulers (DDIM, Euler ancestral, DPM++ 2M Karras).

Run from the repository root (needs torch and diffusers):

    python3 tools/parity/schedulers.py

Writes tests/fixtures/schedulers/cases.json, which crates/engine/tests/schedulers.rs reads. Deterministic: the
same diffusers, torch and numpy give the same file.

Each case builds a scheduler the way a diffusers pipeline does (the model's scheduler config is
loaded with its own `_class_name`, then `Sampler.from_config(pipe.scheduler.config, ...)`), calls
`set_timesteps(steps)`, applies the img2img pipeline's `get_timesteps(steps, strength)` and
`set_begin_index`, noises the shared `original` with the shared `noise` through `add_noise` at the
first timestep, and then runs the denoising loop with a fake model

    out = float32(0.1 * float64(x) + 0.01 * t / 1000)

where `x` is `scale_model_input(sample, t)` and `t` the timestep as a float. Euler ancestral's
per-step `randn_tensor` is replaced by `step_noises[k]` for the k-th call of the run.

Layout: {"diffusers", "torch", "numpy", "shape", "original", "noise", "step_noises",
"configs": {name: scheduler_config.json contents}, "cases": [case, ...]}, where a case is
    {"config", "sampler" ("ddim"|"euler-a"|"dpmpp-2m-karras"), "steps", "strength",
     "timesteps" (all of set_timesteps), "sigmas" (all, [] for DDIM), "init_noise_sigma",
     "begin_index", "noisy" (after add_noise), "trajectory" (the sample after every step)}
Floats are written as the shortest decimal that reads back to the same float32.
"""

import json
import os

import diffusers
import numpy as np
import torch
from diffusers import DDIMScheduler, DPMSolverMultistepScheduler, EulerAncestralDiscreteScheduler
from diffusers.schedulers import scheduling_euler_ancestral_discrete as euler_module

OUT = os.path.join("tests", "fixtures", "schedulers", "cases.json")
SHAPE = (1, 4, 4, 4)
MAX_STEPS = 50

SD15 = {
    "_class_name": "PNDMScheduler",
    "_diffusers_version": "0.6.0",
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "num_train_timesteps": 1000,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "trained_betas": None,
    "clip_sample": False,
}
SD21_V = {
    "_class_name": "DDIMScheduler",
    "_diffusers_version": "0.8.0",
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "clip_sample": False,
    "num_train_timesteps": 1000,
    "prediction_type": "v_prediction",
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "trained_betas": None,
}
CONFIGS = {
    "sd15": SD15,
    "sd21-v": SD21_V,
    "sd15-trailing": {**SD15, "timestep_spacing": "trailing"},
    "sd15-linspace": {**SD15, "timestep_spacing": "linspace", "unknown_key": [1, 2]},
    # DDIM's defaults (clip_sample true) with a clip range and sample prediction.
    "linear-sample": {
        "_class_name": "DDPMScheduler",
        "beta_schedule": "linear",
        "prediction_type": "sample",
        "clip_sample_range": 0.3,
    },
    # Cosine betas; DPM keeps float timesteps (truncated) and ends on sigma_min.
    "cosine": {
        "_class_name": "EulerDiscreteScheduler",
        "beta_schedule": "squaredcos_cap_v2",
        "final_sigmas_type": "sigma_min",
        "clip_sample": True,
        "set_alpha_to_one": True,
    },
}
SAMPLERS = ["ddim", "euler-a", "dpmpp-2m-karras"]
# (steps, strength) pairs run for every config and sampler.
RUNS = [(1, 1.0), (4, 0.5), (10, 0.35), (30, 0.2), (50, 0.35)]
# Extra runs for the SD 1.5 and 2.1 configs.
EXTRA_RUNS = [(10, 1.0), (30, 0.5)]


def f32_list(values):
    """Floats as the shortest decimals that read back to the same float32."""
    return [float(str(np.float32(v))) for v in np.asarray(values, dtype=np.float32).ravel()]


def build(sampler, config):
    orig_cls = getattr(diffusers, config["_class_name"])
    orig = orig_cls.from_config(config)
    if sampler == "ddim":
        return DDIMScheduler.from_config(orig.config)
    if sampler == "euler-a":
        return EulerAncestralDiscreteScheduler.from_config(orig.config)
    return DPMSolverMultistepScheduler.from_config(
        orig.config, algorithm_type="dpmsolver++", solver_order=2, use_karras_sigmas=True
    )


def fake_model(x, t):
    return (0.1 * x.double() + 0.01 * float(t) / 1000).float()


def run_case(name, sampler, steps, strength, original, noise, step_noises):
    sched = build(sampler, CONFIGS[name])
    sched.set_timesteps(steps)
    all_timesteps = sched.timesteps.clone()
    sigmas = sched.sigmas.clone() if sampler != "ddim" else torch.zeros(0)
    init_noise_sigma = float(sched.init_noise_sigma)

    # StableDiffusionImg2ImgPipeline.get_timesteps
    init_timestep = min(int(steps * strength), steps)
    t_start = max(steps - init_timestep, 0)
    timesteps = sched.timesteps[t_start * sched.order :]
    if hasattr(sched, "set_begin_index"):
        sched.set_begin_index(t_start * sched.order)
    assert len(timesteps) > 0
    latent_timestep = timesteps[:1].repeat(1)
    sample = sched.add_noise(original.clone(), noise.clone(), latent_timestep)
    noisy = sample.clone()

    draws = iter(step_noises)

    def fake_randn(shape, **_kwargs):
        drawn = next(draws)
        assert tuple(shape) == tuple(drawn.shape)
        return drawn.clone()

    euler_module.randn_tensor = fake_randn
    trajectory = []
    for t in timesteps:
        model_input = sched.scale_model_input(sample, t)
        out = fake_model(model_input, t)
        sample = sched.step(out, t, sample, return_dict=False)[0]
        trajectory.append(f32_list(sample))

    return {
        "config": name,
        "sampler": sampler,
        "steps": steps,
        "strength": strength,
        "timesteps": [float(t) for t in all_timesteps.tolist()],
        "sigmas": f32_list(sigmas),
        "init_noise_sigma": float(np.float32(init_noise_sigma)),
        "begin_index": t_start * sched.order,
        "noisy": f32_list(noisy),
        "trajectory": trajectory,
    }


def main():
    gen = torch.Generator().manual_seed(20240607)
    original = torch.randn(SHAPE, generator=gen, dtype=torch.float32)
    noise = torch.randn(SHAPE, generator=gen, dtype=torch.float32)
    step_noises = [torch.randn(SHAPE, generator=gen, dtype=torch.float32) for _ in range(MAX_STEPS)]

    cases = []
    for name, config in CONFIGS.items():
        runs = RUNS + (EXTRA_RUNS if name in ("sd15", "sd21-v") else [])
        for sampler in SAMPLERS:
            if sampler == "euler-a" and config.get("prediction_type") == "sample":
                continue  # diffusers' Euler ancestral does not implement it
            for steps, strength in runs:
                cases.append(run_case(name, sampler, steps, strength, original, noise, step_noises))

    doc = {
        "diffusers": diffusers.__version__,
        "torch": torch.__version__,
        "numpy": np.__version__,
        "shape": list(SHAPE),
        "original": f32_list(original),
        "noise": f32_list(noise),
        "step_noises": [f32_list(n) for n in step_noises],
        "configs": CONFIGS,
        "cases": cases,
    }
    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    with open(OUT, "w") as f:
        json.dump(doc, f, separators=(",", ":"))
        f.write("\n")
    print(f"{OUT}: {len(cases)} cases")


if __name__ == "__main__":
    main()
