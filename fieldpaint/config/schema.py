"""The config schema: one frozen dataclass per component, every field with its default, its allowed
values and a one-line comment.

Numbers are checked where they are declared: `count(default, low, high)` is an integer in
[low, high], `number(default, ge|gt=..., le|lt=...)` a finite real in that interval (for a tuple,
every entry). Each section checks its own fields and the rules among them on construction
(`__post_init__`), and `Config` adds the model-structure rules of `fieldpaint.models.structure`,
so no Config object can hold an impossible value; errors are one-line ConfigErrors naming the key.
Choice lists come from the module that owns the concept (mask families from data.masks, attention
kinds and architectures from models.structure), so that config, registry and CLI read one list.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, Union

from fieldpaint.data.masks import MASK_FAMILIES
from fieldpaint.data.symmetry import SYMMETRY_SETTINGS
from fieldpaint.errors import ConfigError
from fieldpaint.models.structure import ARCHITECTURES, ATTENTION_KINDS, WRAPS, validate_model

MIN_GRID = 8  # smallest H and W: the UNet halves the grid at least three times (data.fields reads it)
MAX_GRID = 32768  # largest H and W: a guard against typos, far above any gridded product
PERIODICITIES = ("none", "x", "y", "xy")  # axes on which a field wraps around (a file's `periodic` attribute)
NOMINAL_GRID = (64, 128)  # the grid of a config that names no data file (the notes' Kolmogorov grid)
NOMINAL_VARIABLES = ("u", "v")  # the channels of a config that names no data file (the notes' velocity)

MaskFamily = Literal[MASK_FAMILIES]  # type: ignore[valid-type]  # built from the one list, data.masks
AttentionKind = Literal[ATTENTION_KINDS]  # type: ignore[valid-type]
Architecture = Literal[ARCHITECTURES]  # type: ignore[valid-type]
Periodic = Literal[("auto", *PERIODICITIES)]  # type: ignore[valid-type]
Symmetries = Literal[SYMMETRY_SETTINGS]  # type: ignore[valid-type]
Wrap = Literal[WRAPS]  # type: ignore[valid-type]


# ----------------------------------------------------------------------------------------------
# declared bounds


@dataclass(frozen=True)
class Bounds:
    """An interval for a field (each entry of a tuple field); `integer` = a count."""

    low: float
    high: float
    low_open: bool = False
    high_open: bool = False
    integer: bool = False

    def describe(self) -> str:
        low, high = (f"{b}" if isinstance(b, int) else f"{b:g}" for b in (self.low, self.high))
        interval = f"{'(' if self.low_open else '['}{low}, {high}{')' if self.high_open else ']'}"
        return f"{'an integer' if self.integer else 'a finite number'} in {interval}"

    def check(self, value: Any, key: str) -> None:
        """Raise ConfigError naming `key` unless `value` lies in the bounds."""
        integer = isinstance(value, numbers.Integral) and not isinstance(value, bool)
        number = integer or (isinstance(value, numbers.Real) and math.isfinite(value))
        inside = number and not (self.integer and not integer) and (
            (value > self.low if self.low_open else value >= self.low)
            and (value < self.high if self.high_open else value <= self.high))
        if not inside:  # NaN, inf, a bool, a string or a float for a count, or out of range
            raise ConfigError(f"config key {key!r}: {value!r} is not {self.describe()}")


def count(default: Any, low: int, high: int) -> Any:
    """A field holding an integer (or a tuple of integers) in [low, high]; None passes."""
    return field(default=default, metadata={"bounds": Bounds(low, high, integer=True)})


def number(default: Any, *, ge: float | None = None, gt: float | None = None,
           le: float | None = None, lt: float | None = None) -> Any:
    """A field holding a finite real (or a tuple of them) in the interval given by one lower
    (ge or gt) and one upper (le or lt) bound."""
    assert (ge is None) != (gt is None) and (le is None) != (lt is None), "one lower and one upper bound"
    bounds = Bounds(gt if ge is None else ge, lt if le is None else le, low_open=ge is None, high_open=le is None)
    return field(default=default, metadata={"bounds": bounds})


class Section:
    """Checks the declared bounds of every field, then `check()`, on construction."""

    SECTION: ClassVar[str] = ""  # the key prefix in error messages: 'train' for TrainConfig

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            bounds, value = f.metadata.get("bounds"), getattr(self, f.name)
            if bounds is None or value is None:
                continue
            if isinstance(value, (tuple, list)):
                for i, entry in enumerate(value):
                    bounds.check(entry, f"{self.key(f.name)}[{i}]")
            else:
                bounds.check(value, self.key(f.name))
        self.check()

    def key(self, name: str) -> str:
        return f"{self.SECTION}.{name}" if self.SECTION else name

    def check(self) -> None:
        """Rules among this section's fields; raise ConfigError naming the key."""


# ----------------------------------------------------------------------------------------------
# the sections


@dataclass(frozen=True)
class DataConfig(Section):
    """Which file, which variables and which grid. Unset values come from the file when the config
    is built (`from_file`): every gridded data variable, and the file's grid (padded by
    `fieldpaint.config.loading` to what the model divides); a config naming no file gets the
    nominal NOMINAL_VARIABLES on NOMINAL_GRID, so that its model can be counted and built.

    The grid is the MODEL's grid. A file grid smaller along an axis is padded there (bottom/right)
    with never-valid pixels; a larger one is trained on random crops of height x width (`crop`)
    and reconstructed from overlapping tiles (fieldpaint.data.grid)."""

    SECTION: ClassVar[str] = "data"
    path: str | None = None  # NetCDF/Zarr/npz file (make one with `fieldpaint data generate`)
    variables: tuple[str, ...] = ()  # data variables, one channel each; () = every gridded data variable of the file
    height: int | None = count(None, MIN_GRID, MAX_GRID)  # H (y), the model's grid rows; None = the file's, padded
    width: int | None = count(None, MIN_GRID, MAX_GRID)  # W (x), the model's grid columns; None = the file's, padded
    crop: bool = True  # a file grid larger than height x width: train on random crops of it (False: an error)
    streaming: bool = False  # read training batches lazily from the file (fieldpaint.data.stream), not all into memory
    cache_chunks: int = count(64, 1, 2**20)  # streaming: file chunks kept in the LRU cache (per process)
    sample_dim: str | None = None  # name of the sample/time dimension; None = detect
    y_dim: str | None = None  # name of the row dimension; None = detect (y, lat, ...)
    x_dim: str | None = None  # name of the column dimension; None = detect (x, lon, ...)
    test_fraction: float = number(0.1, gt=0.0, lt=1.0)  # used only when the file has no `split` variable
    train_samples: int | None = count(None, 1, 2**40)  # keep only the first N training samples (None = all)
    periodic: Periodic = "auto"  # axes the field wraps around on; "auto" = the file's `periodic` attribute, else none
    symmetries: Symmetries = "auto"  # frames reconstructions may be drawn in; "auto" = the file's `symmetries` attribute

    def __post_init__(self) -> None:
        if not self.variables or self.height is None or self.width is None:
            variables, (height, width) = self.from_file() if self.path is not None else \
                (NOMINAL_VARIABLES, NOMINAL_GRID)
            object.__setattr__(self, "variables", tuple(self.variables or variables))
            object.__setattr__(self, "height", height if self.height is None else self.height)
            object.__setattr__(self, "width", width if self.width is None else self.width)
        super().__post_init__()

    def from_file(self) -> tuple[tuple[str, ...], tuple[int, int]]:
        """(the variables, the (H, W) grid) of `path` as this config reads it: the named
        variables, else every gridded data variable (fieldpaint.data.layout.gridded_variables)."""
        from fieldpaint.data.layout import file_grid  # data imports config: only at call time

        variables, grid = file_grid(self.path, self.variables, self.sample_dim, self.y_dim, self.x_dim)
        return tuple(variables), grid

    def check(self) -> None:
        if not self.variables:
            raise ConfigError("config key 'data.variables': at least one variable is needed")


@dataclass(frozen=True)
class ModelConfig(Section):
    SECTION: ClassVar[str] = "model"
    arch: Architecture = "unet"  # backbone: UNet, U-ViT (Bao et al. 2023), DiT (Peebles & Xie 2023)
    channels: tuple[int, ...] = count((32, 64, 128, 128), 1, 16384)  # width per level; one downsampling per level
    num_res_blocks: int = count(2, 1, 64)  # ResBlocks per level, on the way down and again on the way up
    attention_levels: tuple[Union[int, str], ...] = ("bottleneck",)  # level index, "HxW" or "bottleneck"
    attention: AttentionKind = "mhsa"  # attention operator at those levels
    attention_bottleneck: AttentionKind | None = None  # operator at the bottleneck; None = same as `attention`
    attention_window: int = count(7, 1, 255)  # k of the k x k window of 'neighborhood' attention (odd)
    attention_heads: int = count(4, 1, 1024)  # heads per attention block (unet) or transformer block
    dropout: float = number(0.1, ge=0.0, lt=1.0)  # dropout inside every ResBlock / transformer block
    norm_groups: int = count(32, 1, 16384)  # GroupNorm groups; must divide every channel width
    resample: Literal["conv", "interp"] = "conv"  # learned (stride-2 / nearest + conv) or fixed (avg-pool / bilinear)
    conditioning: Literal["none", "concat", "film"] = "none"  # see fieldpaint.models.unet
    time_embed_mult: int = count(8, 1, 64)  # time-embedding MLP width = time_embed_mult * channels[0] (256 in presets)
    film_channels: int = count(32, 1, 16384)  # width of the FiLM conditioning encoder (conditioning: film)
    patch_size: int = count(4, 1, 1024)  # uvit/dit: side of the square patches that become tokens
    hidden_size: int = count(192, 4, 16384)  # uvit/dit: token width
    depth: int = count(9, 1, 1024)  # uvit/dit: transformer blocks (odd for uvit: in, mid, out)
    mlp_ratio: float = number(4.0, gt=0.0, le=64.0)  # uvit/dit: MLP width = mlp_ratio * hidden_size
    pos_embed: Literal["sincos", "learned"] = "sincos"  # uvit/dit: fixed 2-D sin-cos or learned position embedding
    # unet: axes along which every 3x3 convolution pads circularly, so that pixels at the edge see across it;
    # only along axes the data wraps around on (data.periodic), on a file grid equal to the model's there
    wrap: Wrap = "none"

    def check(self) -> None:
        if self.attention_window % 2 == 0:
            raise ConfigError(f"config key 'model.attention_window': {self.attention_window} must be odd")


@dataclass(frozen=True)
class DiffusionConfig(Section):
    SECTION: ClassVar[str] = "diffusion"
    schedule: Literal["cosine", "linear"] = "cosine"  # beta schedule
    timesteps: int = count(1000, 2, 100_000)  # T
    # Network target. v by default: with ε and deterministic DDIM, √ᾱ at t = T−1 is 4.9e-5, so an ε
    # error of 0.01 there is a relative error of 23.5 in the mean at 95 % hidden, against 0.067 for v.
    prediction: Literal["eps", "v"] = "v"
    loss_weighting: Literal["none", "min_snr"] = "none"  # per-noise-level loss weights: none, or min-SNR-5 (Hang et al. 2023; diffusion.loss.min_snr_weights)
    # Share of each training batch drawn at the last timestep T-1, where x_t is pure noise and x̂0 is
    # the network's regression E[x0 | conditioning] (the rest stays uniform; diffusion.loss.draw_timesteps).
    # A conditional model's first sampling step reads that regression (fieldpaint.mean_step).
    terminal_fraction: float = number(0.0, ge=0.0, lt=1.0)


@dataclass(frozen=True)
class TrainConfig(Section):
    SECTION: ClassVar[str] = "train"
    epochs: int = count(50, 1, 1_000_000)  # passes over the training split
    batch_size: int = count(64, 1, 65_536)  # global batch (summed over DDP ranks)
    optimizer: Literal["adamw", "adam"] = "adamw"  # AdamW (decoupled decay) or Adam (L2 term)
    lr: float = number(1e-3, gt=0.0, le=1.0)  # peak learning rate
    min_lr: float = number(0.0, ge=0.0, le=1.0)  # floor of the cosine decay; at most lr
    lr_schedule: Literal["cosine", "constant"] = "cosine"  # after warmup
    betas: tuple[float, float] = number((0.9, 0.999), ge=0.0, lt=1.0)  # Adam's moment decay rates
    weight_decay: float = number(1e-4, ge=0.0, le=10.0)  # decoupled (AdamW); Adam's L2 term when optimizer is adam
    warmup_epochs: float = number(10.0, ge=0.0, le=1_000_000.0)  # linear LR warmup from 0 to lr
    ema_decay: float = number(0.9999, ge=0.0, lt=1.0)  # decay of the weights' exponential moving average
    ema_warmup_steps: int = count(2000, 0, 10**9)  # decay ramps linearly 0 -> ema_decay over these steps
    grad_clip: float = number(1.0, ge=0.0, le=1e6)  # max global grad norm; 0 disables
    seed: int = count(0, 0, 2**63 - 1)  # seeds the initial weights, the batch order and each batch's noise and masks
    eval_train_samples: int = count(1024, 0, 2**40)  # fixed train subset scored each epoch; 0 = the full train split
    overfit_patience: int = count(5, 1, 1_000_000)  # warn of overfitting once the best test loss is this old (epochs)
    precision: Literal["auto", "fp32", "bf16"] = "auto"  # bf16 = autocast; auto = bf16 where the device does bf16 natively (runtime.resolve_precision), else fp32
    channels_last: Union[Literal["auto"], bool] = "auto"  # NHWC memory format (faster convolutions and GroupNorm on CPU); auto = on with bf16
    # each training field drawn in a random frame of the data's declared symmetries (data.symmetries,
    # fieldpaint.data.symmetry), the identity among them: more distinct fields per epoch
    augment: Literal["none", "symmetries"] = "none"
    compile: bool = False  # torch.compile the model
    deterministic: bool = False  # torch.use_deterministic_algorithms
    device: str = "auto"  # auto | cpu | cuda | cuda:N | mps

    def check(self) -> None:
        if self.min_lr > self.lr:
            raise ConfigError(f"config key 'train.min_lr': {self.min_lr} is above train.lr = {self.lr}")


@dataclass(frozen=True)
class MasksConfig(Section):
    SECTION: ClassVar[str] = "masks"
    family: MaskFamily = "mixed"  # mask family drawn for conditional training
    coverage: tuple[float, float] = number((0.5, 0.995), ge=0.0, lt=1.0)  # hidden fraction, uniform in [low, high]
    # family mixed: relative frequencies of random, stations, tracks, boxes (null: equal)
    mixed_weights: tuple[float, float, float, float] | None = number(None, ge=0.0, le=1e6)

    def check(self) -> None:
        low, high = self.coverage
        if low > high:
            raise ConfigError(f"config key 'masks.coverage': {list(self.coverage)} must satisfy low <= high")
        if self.mixed_weights is not None:
            if self.family != "mixed":
                raise ConfigError(f"config key 'masks.mixed_weights' applies to masks.family 'mixed', "
                                  f"not {self.family!r}")
            if sum(self.mixed_weights) <= 0:
                raise ConfigError("config key 'masks.mixed_weights': at least one weight must be positive")


@dataclass(frozen=True)
class Config(Section):
    name: str = "custom"  # preset name (or the user's)
    description: str = ""  # one line for `fieldpaint configs`
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    masks: MasksConfig = field(default_factory=MasksConfig)

    def check(self) -> None:
        validate_model(self)


def validate(config: Config) -> None:
    """Raise ConfigError for values that are impossible together (a built Config has passed this
    already; kept for callers that check explicitly)."""
    for section in (config.data, config.model, config.diffusion, config.train, config.masks, config):
        Section.__post_init__(section)

