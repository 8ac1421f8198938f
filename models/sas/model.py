"""The denoiser of sequential amodal segmentation by diffusion: a diffusers ``UNet2DModel`` on (image, cumulative
occlusion mask, noisy mask), its training loss, and mask sampling with diffusers' schedulers.

Data flow for N masks of one occlusion layer (x_0 ∈ {0, 1}, float[N, 1, S, S])::

    x_t        = √ᾱ_t x_0 + √(1 − ᾱ_t) ε                       (DDPMScheduler.add_noise, linear β, T = 1000)
    unet input = [normalised RGB, cumulative mask, x_t]         float[N, 5, S, S]   (cumulative 0 in the ablation)
    output     = ε̂ [N, 1, S, S] and v [N, 1, S, S]              (v ∈ [−1, 1] ↦ log σ² = ½(v+1) log β_t + ½(1−v) log β̃_t)
    loss       = MSE(ε̂, ε) + λ · L_vb(v; ε̂ detached)            (improved-DDPM hybrid loss, as the seed with learn_sigma)

Sampling starts from x_T ~ N(0, I) and runs a diffusers scheduler: ``ddpm`` (DDPMScheduler, the full ancestral
schedule, learned-range variance — diffusers splits the 2-channel output itself), ``ddim`` (DDIMScheduler, η = 0)
or ``dpm`` (DPMSolverMultistepScheduler, 2nd-order DPM-Solver++); the last two see ε̂ only (DPM-Solver's own
learned-variance split assumes 3 image channels, so the ε channel is handed over instead).  Written here because
diffusers has no training losses: the variational-bound term (``vb_term``) with its Gaussian KL and the t = 0
decoder likelihood.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from amodal.errors import CheckpointError, ConfigError
from amodal.models.sas.config import SASConfig
from amodal.models.weights import load_model_record, load_state_strict

SAMPLERS = ("ddpm", "ddim", "dpm")


@dataclass
class SASOutputs:
    """Raw denoiser outputs for N masks: ``noise`` float[N, 1, S, S] (ε̂) and, with ``learn_sigma``,
    ``variance_values`` float[N, 1, S, S] (v, the learned-range interpolation), else None."""

    noise: torch.Tensor
    variance_values: torch.Tensor | None = None

    def model_output(self) -> torch.Tensor:
        """ε̂ and v concatenated on channels (the layout diffusers' DDPMScheduler splits for learned variance)."""
        return self.noise if self.variance_values is None else torch.cat([self.noise, self.variance_values], 1)


@dataclass
class SASTargets:
    """One noised training batch: clean masks ``x0`` and their noised ``x_t`` float[N, 1, S, S], the ``noise`` ε that
    made them and the ``timesteps`` int64[N] in 0..T−1."""

    x0: torch.Tensor
    x_t: torch.Tensor
    noise: torch.Tensor
    timesteps: torch.Tensor


def build_unet(config: SASConfig) -> nn.Module:
    """The diffusers ``UNet2DModel`` of ``config``: scale-shift time conditioning as the seed's UNet
    (``use_scale_shift_norm``), self-attention at ``attention_levels``."""
    from diffusers import UNet2DModel

    levels = range(len(config.block_out_channels))
    down = tuple("AttnDownBlock2D" if i in config.attention_levels else "DownBlock2D" for i in levels)
    up = tuple("AttnUpBlock2D" if i in config.attention_levels else "UpBlock2D" for i in reversed(levels))
    return UNet2DModel(
        sample_size=config.image_size, in_channels=config.in_channels, out_channels=config.out_channels,
        block_out_channels=config.block_out_channels, layers_per_block=config.layers_per_block,
        down_block_types=down, up_block_types=up, norm_num_groups=config.norm_num_groups,
        attention_head_dim=config.attention_head_dim, resnet_time_scale_shift="scale_shift",
        add_attention=bool(config.attention_levels))


class SASDenoiser(nn.Module):
    """``forward(images, cumulative, noisy_masks, timesteps) -> SASOutputs`` (see the module docstring)."""

    def __init__(self, config: SASConfig, *, unet: nn.Module | None = None) -> None:
        super().__init__()
        self.config = config
        self.unet = unet if unet is not None else build_unet(config)
        self.register_buffer("image_mean", torch.tensor(config.image_mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("image_std", torch.tensor(config.image_std).view(1, 3, 1, 1), persistent=False)

    def forward(self, images: torch.Tensor, cumulative: torch.Tensor, noisy_masks: torch.Tensor,
                timesteps: torch.Tensor) -> SASOutputs:
        """images float[N, 3, S, S] RGB in [0, 1]; cumulative float[N, 1, S, S] 0/1 (the layers found so far;
        ignored — held at 0 — when ``use_cumulative`` is False); noisy_masks float[N, 1, S, S] x_t; timesteps
        int64[N] (or one scalar for all) in 0..T−1."""
        n, size = images.shape[0], self.config.image_size
        for name, tensor, channels in (("images", images, 3), ("cumulative", cumulative, 1),
                                       ("noisy_masks", noisy_masks, 1)):
            if tuple(tensor.shape) != (n, channels, size, size):
                raise ConfigError(f"SASDenoiser: {name} must be [{n}, {channels}, {size}, {size}], "
                                  f"got {tuple(tensor.shape)}")
        if not self.config.use_cumulative:
            cumulative = torch.zeros_like(cumulative)
        x = torch.cat([(images - self.image_mean) / self.image_std, cumulative, noisy_masks], dim=1)
        out = self.unet(x, timesteps).sample
        if self.config.learn_sigma:
            return SASOutputs(out[:, :1], out[:, 1:2])
        return SASOutputs(out)


def training_scheduler(config: SASConfig):
    """The T-step DDPMScheduler that noises training masks (and samples with the full schedule)."""
    from diffusers import DDPMScheduler

    return DDPMScheduler(num_train_timesteps=config.num_train_timesteps, beta_start=config.beta_start,
                         beta_end=config.beta_end, beta_schedule="linear",
                         variance_type="learned_range" if config.learn_sigma else "fixed_large",
                         clip_sample=True, clip_sample_range=1.0)


def build_scheduler(config: SASConfig, sampler: str):
    """A fresh diffusers scheduler for ``sampler`` (``ddpm``, ``ddim``, ``dpm``) on the training β schedule; the
    few-step samplers space their steps ``trailing`` so the first step starts at t = T−1 (pure noise).  Every one
    keeps x̂_0 in [−1, 1] as the seed's ``clip_denoised`` (DPM-Solver through its thresholding with a maximum of
    1, which is that clip)."""
    from diffusers import DDIMScheduler, DPMSolverMultistepScheduler

    common = dict(num_train_timesteps=config.num_train_timesteps, beta_start=config.beta_start,
                  beta_end=config.beta_end, beta_schedule="linear")
    if sampler == "ddpm":
        return training_scheduler(config)
    if sampler == "ddim":
        return DDIMScheduler(**common, clip_sample=True, clip_sample_range=1.0, set_alpha_to_one=True,
                             timestep_spacing="trailing")
    if sampler == "dpm":
        return DPMSolverMultistepScheduler(**common, algorithm_type="dpmsolver++", solver_order=2,
                                           timestep_spacing="trailing", thresholding=True, sample_max_value=1.0)
    raise ConfigError(f"sampler must be one of {SAMPLERS}, got {sampler!r}")


class DiffusionTerms:
    """The closed-form quantities of the linear-β diffusion the loss needs, float64 on the CPU then cast:
    ᾱ_t, β_t, the posterior q(x_{t−1} | x_t, x_0) mean coefficients and its log-variance (t = 0 clipped to t = 1's,
    as improved DDPM)."""

    def __init__(self, scheduler) -> None:
        betas = scheduler.betas.double()
        alphas_cumprod = torch.cumprod(1.0 - betas, 0)
        prev = torch.cat([torch.ones(1, dtype=torch.float64), alphas_cumprod[:-1]])
        posterior_variance = betas * (1.0 - prev) / (1.0 - alphas_cumprod)
        self.log_betas = betas.log()
        self.posterior_log_variance = torch.cat([posterior_variance[1:2], posterior_variance[1:]]).log()
        self.coef_x0 = betas * prev.sqrt() / (1.0 - alphas_cumprod)
        self.coef_xt = (1.0 - prev) * (1.0 - betas).sqrt() / (1.0 - alphas_cumprod)
        self.sqrt_recip_alphas_cumprod = (1.0 / alphas_cumprod).sqrt()
        self.sqrt_recipm1_alphas_cumprod = (1.0 / alphas_cumprod - 1.0).sqrt()

    @staticmethod
    def _at(values: torch.Tensor, timesteps: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        return values.to(like.device)[timesteps.to(like.device)].to(like.dtype).view(-1, *([1] * (like.dim() - 1)))

    def posterior(self, x0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean, log-variance) of q(x_{t−1} | x_t, x_0)."""
        mean = self._at(self.coef_x0, t, x_t) * x0 + self._at(self.coef_xt, t, x_t) * x_t
        return mean, self._at(self.posterior_log_variance, t, x_t).expand_as(x_t)

    def model_posterior(self, eps: torch.Tensor, v: torch.Tensor, x_t: torch.Tensor,
                        t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean, log-variance) of p(x_{t−1} | x_t): x̂_0 from ε̂ (clipped to [−1, 1] as sampling does), the
        learned-range log-variance from v."""
        x0 = (self._at(self.sqrt_recip_alphas_cumprod, t, x_t) * x_t
              - self._at(self.sqrt_recipm1_alphas_cumprod, t, x_t) * eps).clamp(-1.0, 1.0)
        mean, _ = self.posterior(x0, x_t, t)
        frac = (v + 1.0) / 2.0
        log_var = frac * self._at(self.log_betas, t, x_t) + (1.0 - frac) * self._at(self.posterior_log_variance, t, x_t)
        return mean, log_var


def gaussian_kl(mean1: torch.Tensor, logvar1: torch.Tensor, mean2: torch.Tensor,
                logvar2: torch.Tensor) -> torch.Tensor:
    """KL(N(mean1, e^logvar1) ‖ N(mean2, e^logvar2)) elementwise, in nats."""
    return 0.5 * (-1.0 + logvar2 - logvar1 + torch.exp(logvar1 - logvar2) + (mean1 - mean2) ** 2 * torch.exp(-logvar2))


def vb_term(terms: DiffusionTerms, outputs: SASOutputs, targets: SASTargets) -> torch.Tensor:
    """Per-sample variational-bound term in bits per pixel, float[N]: KL(q(x_{t−1}|x_t,x_0) ‖ p(x_{t−1}|x_t)) for
    t > 0 and the Gaussian decoder's −log p(x_0|x_1) (continuous density; the masks are not 8-bit images) at
    t = 0.  The mean comes from the detached ε̂, so only the variance learns from it."""
    if outputs.variance_values is None:
        raise ConfigError("vb_term needs the learned variance (learn_sigma)")
    t = targets.timesteps
    true_mean, true_logvar = terms.posterior(targets.x0, targets.x_t, t)
    mean, logvar = terms.model_posterior(outputs.noise.detach(), outputs.variance_values, targets.x_t, t)
    kl = gaussian_kl(true_mean, true_logvar, mean, logvar).flatten(1).mean(1)
    nll = (0.5 * (math.log(2 * math.pi) + logvar + (targets.x0 - mean) ** 2 * torch.exp(-logvar))).flatten(1).mean(1)
    return torch.where(t.to(kl.device) == 0, nll, kl) / math.log(2.0)


def sas_losses(outputs: SASOutputs, targets: SASTargets, terms: DiffusionTerms | None,
               vlb_weight: float = 1.0) -> dict[str, torch.Tensor]:
    """``loss_mse`` = MSE(ε̂, ε); with a learned variance also ``loss_vb`` = ``vlb_weight`` × mean ``vb_term``."""
    losses = {"loss_mse": F.mse_loss(outputs.noise, targets.noise)}
    if outputs.variance_values is not None and terms is not None and vlb_weight > 0:
        losses["loss_vb"] = vlb_weight * vb_term(terms, outputs, targets).mean()
    return losses


def noise_masks(scheduler, x0: torch.Tensor, generator: torch.Generator | None = None) -> SASTargets:
    """x_t of clean masks ``x0`` float[N, 1, S, S] at uniform random timesteps (``scheduler.add_noise``)."""
    n = x0.shape[0]
    t = torch.randint(0, scheduler.config.num_train_timesteps, (n,), generator=generator).to(x0.device)
    noise = torch.randn(x0.shape, generator=generator).to(x0.device, x0.dtype)
    return SASTargets(x0, scheduler.add_noise(x0, noise, t), noise, t)


@torch.no_grad()
def sample_masks(model: SASDenoiser, images: torch.Tensor, cumulative: torch.Tensor, *, sampler: str = "ddim",
                 steps: int = 10, generator: torch.Generator | None = None) -> torch.Tensor:
    """Masks sampled for each (image, cumulative mask) pair: float[N, 1, S, S] x̂_0 (threshold at 0.5).  ``steps``
    reverse steps of ``sampler`` (``ddpm`` with steps = T is the full ancestral schedule); ``generator`` (CPU)
    draws x_T and the ancestral noise, so a seed reproduces the masks."""
    config = model.config
    if not 1 <= steps <= config.num_train_timesteps:
        raise ConfigError(f"steps must be in 1..{config.num_train_timesteps}, got {steps}")
    scheduler = build_scheduler(config, sampler)
    scheduler.set_timesteps(steps)
    n, size = images.shape[0], config.image_size
    x = torch.randn((n, 1, size, size), generator=generator).to(images.device, images.dtype)
    x = x * scheduler.init_noise_sigma
    for t in scheduler.timesteps:
        timesteps = torch.full((n,), int(t), dtype=torch.long, device=images.device)
        outputs = model(images, cumulative, scheduler.scale_model_input(x, t), timesteps)
        model_output = outputs.model_output() if sampler == "ddpm" else outputs.noise
        x = scheduler.step(model_output, t, x, generator=generator).prev_sample
    return x


def build_sas(*, config: SASConfig) -> SASDenoiser:
    """A freshly initialised denoiser."""
    return SASDenoiser(config)


@dataclass
class LoadedSAS:
    model: SASDenoiser
    config: SASConfig
    metadata: dict[str, Any]


def load_sas(path: str | Path) -> LoadedSAS:
    """Rebuild the denoiser (eval mode) from a safetensors file whose metadata record holds ``config``.  Raises
    CheckpointError for a missing/truncated file, a missing or invalid config, or mismatched tensors."""
    state, metadata, config = load_model_record(path, SASConfig, "SAS denoiser")
    if not isinstance(config, SASConfig):
        raise CheckpointError(f"{path}: metadata config is not a SAS denoiser config")
    model = build_sas(config=config)
    load_state_strict(model, state, path)
    return LoadedSAS(model.eval(), config, metadata)
