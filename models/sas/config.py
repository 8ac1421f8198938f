"""Configuration of the sequential amodal segmentation denoiser (SYSTEMS §5; saraao/SAS on Wolleb et al.)."""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from amodal.errors import ConfigError
from amodal.settings import build_settings


@dataclass(frozen=True)
class SASConfig:
    """Architecture and diffusion of the denoiser.

    The UNet (diffusers ``UNet2DModel``) sees ``image_size``² inputs of 5 channels: the RGB image (in [0, 1],
    normalised by ``image_mean``/``image_std``), the cumulative occlusion mask of the layers found so far (0/1) and the
    noisy mask x_t; it predicts the noise ε and, with ``learn_sigma``, a second channel v that sets the reverse
    variance by interpolating log β_t and log β̃_t (``learned_range``, as the seed).  Masks x_0 are 0/1 as the seed's
    (thresholded at 0.5 after sampling).  ``block_out_channels`` / ``layers_per_block`` / ``attention_levels`` (the
    indexes of UNet levels with self-attention; the seed attends at 16² and 8²) shape the UNet; ``use_cumulative``
    False is the ablation whose cumulative-mask input is held at zero.  Training: T = ``num_train_timesteps``, linear
    β from ``beta_start`` to ``beta_end``; loss MSE(ε) + ``vlb_weight`` × the variational bound term of the learned
    variance (improved DDPM's hybrid loss; the mean is not trained through it)."""

    image_size: int = 64
    block_out_channels: tuple[int, ...] = (128, 256, 384, 512)
    layers_per_block: int = 2
    attention_levels: tuple[int, ...] = (2, 3)
    attention_head_dim: int = 32
    norm_num_groups: int = 32
    learn_sigma: bool = True
    use_cumulative: bool = True
    num_train_timesteps: int = 1000
    beta_start: float = 1.0e-4
    beta_end: float = 0.02
    vlb_weight: float = 1.0
    image_mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    image_std: tuple[float, float, float] = (0.5, 0.5, 0.5)

    def __post_init__(self) -> None:
        for name in ("image_size", "layers_per_block", "attention_head_dim", "norm_num_groups", "num_train_timesteps"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"SASConfig.{name} must be an integer ≥ 1, got {value!r}")
        if not self.block_out_channels or min(self.block_out_channels) < 1:
            raise ConfigError(f"SASConfig.block_out_channels must be positive widths, got {self.block_out_channels}")
        if bad := [c for c in self.block_out_channels if c % self.norm_num_groups]:
            raise ConfigError(f"SASConfig: widths {bad} are not multiples of norm_num_groups {self.norm_num_groups}")
        levels = len(self.block_out_channels)
        if self.image_size % 2 ** (levels - 1):
            raise ConfigError(f"SASConfig.image_size {self.image_size} must be divisible by 2^{levels - 1} "
                              f"({levels} UNet levels)")
        if any(not 0 <= i < levels for i in self.attention_levels):
            raise ConfigError(f"SASConfig.attention_levels {self.attention_levels} outside 0..{levels - 1}")
        if not 0.0 < self.beta_start < self.beta_end < 1.0:
            raise ConfigError(f"SASConfig: need 0 < beta_start < beta_end < 1, got {self.beta_start}, {self.beta_end}")
        if self.vlb_weight < 0:
            raise ConfigError(f"SASConfig.vlb_weight must be ≥ 0, got {self.vlb_weight}")
        for name in ("image_mean", "image_std"):
            value = tuple(float(v) for v in getattr(self, name))
            if len(value) != 3 or (name == "image_std" and min(value) <= 0):
                raise ConfigError(f"SASConfig.{name} must be three numbers (std > 0), got {getattr(self, name)!r}")
            object.__setattr__(self, name, value)
        object.__setattr__(self, "block_out_channels", tuple(int(c) for c in self.block_out_channels))
        object.__setattr__(self, "attention_levels", tuple(int(i) for i in self.attention_levels))

    @property
    def in_channels(self) -> int:
        """RGB + cumulative mask + noisy mask."""
        return 5

    @property
    def out_channels(self) -> int:
        """ε, plus the variance interpolation v when ``learn_sigma``."""
        return 2 if self.learn_sigma else 1

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "SASConfig":
        return build_settings(cls, d, "SASConfig")


def tiny_config(**overrides: Any) -> SASConfig:
    """The CPU configuration: 64×64 as the original, widths 16/32/64 (~0.65 M parameters), one residual block per
    level, no self-attention (it added ~8 % to the training step and ~25 % to a sampling step on the shared CPU,
    and the tiny runs are bounded by wall time)."""
    values: dict[str, Any] = dict(image_size=64, block_out_channels=(16, 32, 64), layers_per_block=1,
                                  attention_levels=(), attention_head_dim=16, norm_num_groups=8)
    values.update(overrides)
    return build_settings(SASConfig, values, "tiny_config")


def paper_config(**overrides: Any) -> SASConfig:
    """The seed's: 64×64, width 128 × (1, 2, 3, 4), two residual blocks per level, attention at 16² and 8²."""
    return build_settings(SASConfig, dict(overrides), "paper_config")
