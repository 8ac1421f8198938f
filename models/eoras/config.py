"""Configuration of EoRaS (video amodal segmentation of object tracks, Fan et al., ICCV 2023)."""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from amodal.errors import ConfigError
from amodal.settings import build_settings

BLOCKS = ("bottleneck", "basic")
NORMS = ("batch", "group")
BEV_PROJECTIONS = ("crop", "image_normalised")
ATTENTION_BACKENDS = ("auto", "triton", "cpu", "reference")


@dataclass(frozen=True)
class EoRaSConfig:
    """Architecture of EoRaS (defaults: the paper's / official code's MOVi configuration).

    Backbone: a ResNet-FPN with GroupNorm residual blocks (``block``, ``layers`` blocks per stage, ``widths`` base
    planes per stage, ``gn_groups``); the stem norm is ``stem_norm`` (the official code: BatchNorm); only P3
    (``fpn_channels`` × input/8 × input/8) is used. Input: a crop of ``enlarge`` × the visible box resized to
    ``input_size``² RGB in [0, 1] (not mean/std normalised, as the official code).

    BEV: a fixed 3-D grid of ``bev_width_bins`` × ``bev_height_bins`` × ``bev_depth_bins`` cell centres over
    ``bev_width_m`` (x, right) × ``bev_height_m`` (y, down) × ``bev_depth_m`` (z, forward) in camera axes, rotated
    about x by ``bev_pitch_rad``, projected with K; P3 is sampled at the projected points (``grid_sample``), the height
    bins stacked as channels, and ``bev_down`` stride-2 blocks (``bev_norm``) bring it to fpn_channels ×
    (depth/2^n) × (width/2^n). ``bev_projection``: ``crop`` — K maps camera points to the pixels of the resized crop
    (``amodal.models.eoras.geometry.crop_intrinsics``; the geometrically right choice, ours); ``image_normalised`` —
    K maps to [0, 1]² coordinates of the whole image and is applied to the crop's features as if the crop were the
    image (what the official code and its checkpoints do, with Kubric's K).

    Fusion: ``num_slots`` learned slots; per frame three transformer decoders of ``num_layers`` post-norm layers
    (``d_model``, ``num_heads``, ``ffn_dim``): slots ← BEV tokens, slots ← front-view tokens, front view ← slots;
    slots carry over frames. ``use_bev`` / ``use_slots``: the ablations (no BEV branch; no slots — the front view
    attends to the BEV tokens, or to itself without BEV, frame by frame, with no temporal state). Decoders: visible
    and amodal, three stride-2 transposed convolutions each (``decoder_channels``), logits of
    ``mask_size`` = 8·(input/8 − 1) + 1 pixels per side (121 at 128).
    Losses: focal (``focal_gamma``) on the amodal mask + ``visible_weight`` × focal on the visible mask.
    """

    input_size: int = 128
    enlarge: float = 2.0
    block: str = "bottleneck"
    layers: tuple[int, ...] = (3, 4, 6, 3)
    widths: tuple[int, ...] = (64, 128, 256, 512)
    stem_channels: int = 64
    stem_norm: str = "batch"
    gn_groups: int = 16
    fpn_channels: int = 256
    bev_width_m: tuple[float, float] = (-10.0, 10.0)
    bev_height_m: tuple[float, float] = (-3.5, 1.5)
    bev_depth_m: tuple[float, float] = (0.0, 20.0)
    bev_width_bins: int = 64
    bev_height_bins: int = 5
    bev_depth_bins: int = 64
    bev_pitch_rad: float = 0.0
    bev_down: int = 2
    bev_norm: str = "batch"
    bev_projection: str = "crop"
    d_model: int = 512
    num_heads: int = 8
    ffn_dim: int = 2048
    num_layers: int = 2
    num_slots: int = 8
    dropout: float = 0.1
    decoder_channels: tuple[int, int] = (512, 256)
    use_bev: bool = True
    use_slots: bool = True
    focal_gamma: float = 2.0
    visible_weight: float = 1.0
    mask_threshold: float = 0.5
    attention_backend: str = "auto"

    def __post_init__(self) -> None:
        for name in ("input_size", "stem_channels", "gn_groups", "fpn_channels", "bev_width_bins", "bev_height_bins",
                     "bev_depth_bins", "d_model", "num_heads", "ffn_dim", "num_layers", "num_slots"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"EoRaSConfig.{name} must be an integer ≥ 1, got {value!r}")
        if self.input_size % 8 or self.input_size < 16:
            raise ConfigError(f"EoRaSConfig.input_size must be a multiple of 8 and ≥ 16 (P3 is input/8), got "
                              f"{self.input_size}")
        if self.block not in BLOCKS:
            raise ConfigError(f"EoRaSConfig.block must be one of {BLOCKS}, got {self.block!r}")
        if len(self.layers) != 4 or len(self.widths) != 4 or min(self.layers) < 1 or min(self.widths) < 1:
            raise ConfigError(f"EoRaSConfig.layers / widths need 4 positive entries (ResNet stages), got "
                              f"{self.layers} / {self.widths}")
        for name in ("stem_norm", "bev_norm"):
            if getattr(self, name) not in NORMS:
                raise ConfigError(f"EoRaSConfig.{name} must be one of {NORMS}, got {getattr(self, name)!r}")
        expansion = 4 if self.block == "bottleneck" else 1
        for channels in (self.stem_channels, *self.widths, *(w * expansion for w in self.widths)):
            if channels % self.gn_groups:
                raise ConfigError(f"EoRaSConfig.gn_groups {self.gn_groups} does not divide {channels} channels")
        for name in ("bev_width_m", "bev_height_m", "bev_depth_m"):
            low, high = getattr(self, name)
            if not high > low:
                raise ConfigError(f"EoRaSConfig.{name} must be (low, high) with high > low, got {getattr(self, name)}")
        if not isinstance(self.bev_down, int) or self.bev_down < 1:
            raise ConfigError(f"EoRaSConfig.bev_down must be an integer ≥ 1, got {self.bev_down!r}")
        for name in ("bev_width_bins", "bev_depth_bins"):
            if getattr(self, name) % (2 ** self.bev_down):
                raise ConfigError(f"EoRaSConfig.{name} {getattr(self, name)} must be a multiple of 2^bev_down = "
                                  f"{2 ** self.bev_down}")
        if self.bev_projection not in BEV_PROJECTIONS:
            raise ConfigError(f"EoRaSConfig.bev_projection must be one of {BEV_PROJECTIONS}, got "
                              f"{self.bev_projection!r}")
        if self.d_model % self.num_heads:
            raise ConfigError(f"EoRaSConfig.d_model {self.d_model} is not a multiple of num_heads {self.num_heads}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"EoRaSConfig.dropout must be in [0, 1), got {self.dropout}")
        if len(self.decoder_channels) != 2 or min(self.decoder_channels) < 1:
            raise ConfigError(f"EoRaSConfig.decoder_channels needs 2 positive widths, got {self.decoder_channels}")
        for name in ("use_bev", "use_slots"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"EoRaSConfig.{name} must be true or false, got {getattr(self, name)!r}")
        if not self.enlarge >= 1.0:
            raise ConfigError(f"EoRaSConfig.enlarge must be ≥ 1, got {self.enlarge}")
        if not self.focal_gamma >= 0.0 or not self.visible_weight >= 0.0:
            raise ConfigError(f"EoRaSConfig: focal_gamma and visible_weight must be ≥ 0, got {self.focal_gamma}, "
                              f"{self.visible_weight}")
        if not 0.0 < self.mask_threshold < 1.0:
            raise ConfigError(f"EoRaSConfig.mask_threshold must be in (0, 1), got {self.mask_threshold}")
        if self.attention_backend not in ATTENTION_BACKENDS:
            raise ConfigError(f"EoRaSConfig.attention_backend must be one of {ATTENTION_BACKENDS}, got "
                              f"{self.attention_backend!r}")

    @property
    def feature_size(self) -> int:
        """Side of P3 (the front-view token grid)."""
        return self.input_size // 8

    @property
    def bev_size(self) -> tuple[int, int]:
        """(depth, width) of the BEV token grid after the down-sampling blocks."""
        f = 2 ** self.bev_down
        return self.bev_depth_bins // f, self.bev_width_bins // f

    @property
    def mask_size(self) -> int:
        """Side of the decoded masks: three (k3, s2, p1) transposed convolutions of the P3 grid."""
        n = self.feature_size
        for _ in range(3):
            n = 2 * n - 1
        return n

    @property
    def decoder_in_channels(self) -> int:
        """Forward ⊕ backward fused features (2·d_model), or d_model without slots (no temporal passes)."""
        return 2 * self.d_model if self.use_slots else self.d_model

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "EoRaSConfig":
        return build_settings(cls, d, "EoRaSConfig")


def tiny_config(**overrides: Any) -> EoRaSConfig:
    """A CPU-sized EoRaS: basic blocks (1,1,1,1) of widths 16…128, GroupNorm everywhere, FPN 64, d_model 64 with
    4 heads and 1 layer per decoder, BEV 32×5×32 → 8×8 tokens; input 128 (P3 16×16), masks 121×121."""
    base: dict[str, Any] = dict(
        block="basic", layers=(1, 1, 1, 1), widths=(16, 32, 64, 128), stem_channels=16, stem_norm="group",
        gn_groups=8, fpn_channels=64, bev_width_bins=32, bev_depth_bins=32, bev_norm="group", d_model=64,
        num_heads=4, ffn_dim=128, num_layers=1, dropout=0.0, decoder_channels=(64, 32))
    base.update(overrides)
    return EoRaSConfig(**base)
