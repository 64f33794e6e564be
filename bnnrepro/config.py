"""Typed configuration: structured-config dataclasses (Hydra's schema) and validation.

The dataclasses give every field a type (Hydra rejects ``train.epochs=abc`` itself); :func:`validate`
checks names against the registries and numbers against their ranges, and raises
:class:`ConfigError` naming the field and what is allowed. It runs before any data is loaded.
"""
from __future__ import annotations

import inspect
import math
import os
from dataclasses import dataclass, field
from typing import Any, Optional

from omegaconf import DictConfig, OmegaConf

from .errors import ConfigError
from .quant.scheme import QuantConfig, QuantScheme


@dataclass
class DataConfig:
    name: str = "mnist"
    root: Optional[str] = None          # null: env BNNREPRO_DATA, else the per-user cache
    download: Any = "auto"              # auto | true | false
    val_size: Optional[int] = None      # null: the paper's split (MNIST: last 10k of train)
    preprocessing: str = "scale"        # scale (pixels to [-1, 1]) | gcn | zca
    train_subset: Optional[int] = None  # keep the first N training examples
    use_extra: bool = False             # SVHN: append extra_32x32.mat to train
    image_size: Optional[int] = None    # ImageNet resize/crop
    # memory: whole splits held as uint8 tensors; stream (image folders: imagenet): decoded per batch by
    # `workers` DataLoader processes (per torchrun process), with the train split's `augment`
    loader: str = "memory"              # memory | stream
    workers: int = 4                    # stream: decoding processes; 0: in the training process
    augment: str = "none"               # none | resized_crop_flip | random_crop_flip (stream only)


@dataclass
class ModelConfig:
    name: str = "mlp"
    hidden: list[int] = field(default_factory=lambda: [4096, 4096, 4096])
    channels: list[int] = field(default_factory=lambda: [128, 128, 256, 256, 512, 512])
    fc: list[int] = field(default_factory=lambda: [1024, 1024])
    width_mult: float = 1.0
    dropout_in: float = 0.0
    dropout_hidden: float = 0.0
    bias: bool = False
    init: str = "auto"                  # auto | uniform1 | glorot | torch
    batchnorm: str = "standard"         # standard | shift
    # the BatchNorm after the output layer: same (as model.batchnorm) | standard | shift; Torch7's
    # MNIST model ends in a plain nn.BatchNormalization behind shift-based hidden layers
    output_batchnorm: str = "same"
    # BatchNorm statistics at evaluation: running (the averages kept in training; what the packed
    # engine folds) | batch (each evaluation batch's own, in batches of train.batch_size: Torch7's
    # -runningVal false default)
    bn_eval_stats: str = "running"
    bn_eps: float = 1e-4
    bn_momentum: float = 0.1
    variant: Optional[str] = None       # model-specific variant (e.g. DoReFa SVHN A-D)
    embed_dim: Optional[int] = None     # language models: embedding size (null: the first hidden layer's units)


@dataclass
class OptimConfig:
    name: str = "adam"                  # adam | adamax | shift_adamax | sgd
    lr: float = 3e-3
    lr_final: Optional[float] = 3e-7    # exponential schedule: lr decays to lr_final over the run
    schedule: str = "exponential"       # exponential | step | multistep | constant
    step_epochs: int = 20               # step schedule: multiply by gamma every step_epochs
    milestones: list[int] = field(default_factory=list)  # multistep: multiply by gamma after these epochs
    gamma: float = 0.5
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    momentum: float = 0.9               # sgd
    weight_decay: float = 0.0
    weight_decay_on: str = "all"        # all parameters | fc_weights (fully connected layers' weights only)
    lr_scale: str = "glorot"            # glorot | glorot_pow2 | none
    lr_scale_layers: str = "clipping"   # clipping (layers that clip latent weights: BNN) | all quantized layers
    clip_latent: bool = True            # clip latent weights of binary layers to [-1, 1] after each step
    # one fused kernel per parameter (torch's fused Adam/SGD, foreach Adamax, shift-AdaMax in Numba):
    # the same update, to float rounding; false: the per-tensor reference implementations
    fused: bool = True


@dataclass
class TrainConfig:
    epochs: int = 1000
    batch_size: int = 100
    eval_batch_size: int = 1000
    loss: str = "squared_hinge"         # squared_hinge | cross_entropy
    num_threads: Optional[int] = None   # torch intra-op threads; null: torch's default
    progress: bool = True
    deterministic: bool = True
    # GPU-path knobs (no effect on results in fp32 defaults). amp=bf16 autocasts the training forward:
    # matmuls/convs take bf16 inputs (exact for +-1 operands), while latent weights, optimizer state,
    # the quantizers' fp32 inputs on weights, the loss and evaluation stay fp32.
    amp: str = "none"                   # none | bf16
    # matmul precision of the layers whose operands are exactly +-1 (binary weights x binary
    # activations): bf16 operands, fp32 sums, so their forward outputs are bit-identical to fp32;
    # every other layer stays fp32. auto: bf16 only on bf16 matrix hardware (AMX, AVX512-BF16, tensor
    # cores); the choice is recorded in summary.json. (amp=bf16, by contrast, rounds every layer.)
    # Default fp32: auto would make one config train with other numerics on other machines.
    precision: str = "fp32"             # auto | fp32 | bf16
    channels_last: bool = False         # NHWC memory format for conv models (faster convs on GPUs)
    compile: bool = False               # torch.compile the training forward (inductor needs a C++ compiler)
    # start from a trained run's weights (DoReFa's "initialized from 32-bit" rows): a run directory
    # (its best.pt, else last.pt) or a checkpoint file; every parameter and buffer (BatchNorm's
    # statistics too) must match this model's by name and shape; the optimizer starts fresh
    init_from: Optional[str] = None
    # language models (train/lm.py) only: truncated-BPTT length, and the gradient-norm clip applied
    # before every step (null: none; the QNN PTB presets set 0.25, a [U] choice)
    bptt: int = 35
    clip_grad_norm: Optional[float] = None


@dataclass
class ScaleConfig:
    name: str = "paper"
    epochs: Optional[int] = None        # cap on train.epochs (null: the preset's)
    width_mult: float = 1.0             # multiplies model.width_mult
    train_subset: Optional[int] = None  # cap on the training examples
    max_dropout_hidden: Optional[float] = None  # cap on model.dropout_hidden (narrow nets underfit)
    # truncate: run the first `epochs` epochs of the paper's LR schedule (defined over train.epochs);
    # compress: squeeze the whole schedule into the scaled epochs
    schedule: str = "truncate"
    description: str = "the paper's protocol"


@dataclass
class LoggerConfig:
    name: str = "local"                 # local | csv | tensorboard | wandb
    project: str = "bnnrepro"
    mode: Optional[str] = None          # wandb mode; null: online with an API key, else offline


@dataclass
class Config:
    seed: int = 0
    paper: Optional[str] = None
    experiment: Optional[str] = None
    runs_dir: str = "runs"
    run_name: Optional[str] = None
    resume: Optional[str] = None
    device: str = "cpu"                 # cpu | cuda | auto
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    quant: QuantConfig = field(default_factory=QuantConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    scale: ScaleConfig = field(default_factory=ScaleConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)


def register_configs() -> None:
    from hydra.core.config_store import ConfigStore

    ConfigStore.instance().store(name="base_config", node=Config)


CHOICES = {
    "data.download": ("auto", "true", "false"),
    "data.preprocessing": ("scale", "gcn", "zca"),
    "model.init": ("auto", "uniform1", "glorot", "torch"),
    "model.batchnorm": ("standard", "shift"),
    "model.output_batchnorm": ("same", "standard", "shift"),
    "model.bn_eval_stats": ("running", "batch"),
    "optim.name": ("adam", "adamax", "shift_adamax", "sgd"),
    "data.loader": ("memory", "stream"),
    "data.augment": ("none", "resized_crop_flip", "random_crop_flip"),
    "optim.schedule": ("exponential", "step", "multistep", "constant"),
    "scale.schedule": ("truncate", "compress"),
    "optim.lr_scale": ("glorot", "glorot_pow2", "none"),
    "optim.weight_decay_on": ("all", "fc_weights"),
    "optim.lr_scale_layers": ("clipping", "all"),
    "train.loss": ("squared_hinge", "cross_entropy"),
    "train.amp": ("none", "bf16"),
    "train.precision": ("auto", "fp32", "bf16"),
    "device": ("cpu", "cuda", "auto"),
    "logger.name": ("local", "csv", "tensorboard", "wandb"),
}


def _get(cfg, dotted: str):
    return OmegaConf.select(cfg, dotted)


def _choice(cfg, dotted: str, allowed) -> None:
    value = _get(cfg, dotted)
    if isinstance(value, bool) and dotted == "data.download":
        return
    if str(value) not in allowed:
        raise ConfigError(f"{dotted}={value!r} is not allowed; allowed: {', '.join(allowed)}")


def _number(value) -> bool:
    return not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)


def _positive(cfg, dotted: str, allow_none: bool = False) -> None:
    value = _get(cfg, dotted)
    if value is None and allow_none:
        return
    if not _number(value) or value <= 0:
        raise ConfigError(f"{dotted}={value!r} must be a positive (finite) number")


def _fraction(cfg, dotted: str) -> None:
    value = _get(cfg, dotted)
    if not _number(value) or not 0.0 <= value < 1.0:
        raise ConfigError(f"{dotted}={value!r} must be in [0, 1)")


# torch.manual_seed takes 64 bits; numpy's seed is taken mod 2**32 (train loop)
MAX_SEED = 2**63 - 1
MAX_THREADS = 1024
MAX_RUN_NAME = 200
LOGGER_MODES = ("online", "offline", "disabled")


def validate(cfg: DictConfig) -> None:
    """Check every name and range; raise ConfigError naming the field. Loads no data."""
    from . import data, models

    if cfg.data.name not in data.names():
        raise ConfigError(f"data.name={cfg.data.name!r} is unknown; allowed: {', '.join(data.names())}")
    if cfg.model.name not in models.names():
        raise ConfigError(f"model.name={cfg.model.name!r} is unknown; allowed: {', '.join(models.names())}")
    _check_language_model(cfg)
    for dotted, allowed in CHOICES.items():
        _choice(cfg, dotted, allowed)
    QuantScheme.from_config(quant_section(cfg))  # names, bit widths, role values; ConfigError naming the field
    for dotted in ("train.epochs", "train.batch_size", "train.eval_batch_size", "optim.lr",
                   "model.width_mult", "scale.width_mult", "model.bn_eps", "optim.step_epochs", "optim.eps"):
        _positive(cfg, dotted)
    for dotted in ("scale.epochs", "scale.train_subset", "data.train_subset", "optim.lr_final",
                   "train.num_threads", "data.image_size"):
        _positive(cfg, dotted, allow_none=True)
    for dotted in ("train.epochs", "train.batch_size", "train.eval_batch_size"):
        if not isinstance(_get(cfg, dotted), int):
            raise ConfigError(f"{dotted}={_get(cfg, dotted)!r} must be a positive integer")
    _check_optimizer(cfg)
    _check_milestones(cfg)
    _check_loader(cfg)
    if not 0 <= cfg.seed <= MAX_SEED:
        raise ConfigError(f"seed={cfg.seed} must be in [0, 2**63 - 1]")
    if cfg.train.num_threads is not None and cfg.train.num_threads > MAX_THREADS:
        raise ConfigError(f"train.num_threads={cfg.train.num_threads} must be at most {MAX_THREADS} "
                          f"(this machine has {os.cpu_count()} CPUs); null: torch's default")
    for dotted in ("model.dropout_in", "model.dropout_hidden", "model.bn_momentum"):
        _fraction(cfg, dotted)
    if cfg.scale.max_dropout_hidden is not None:
        _fraction(cfg, "scale.max_dropout_hidden")
    if cfg.data.val_size is not None and cfg.data.val_size < 0:
        raise ConfigError(f"data.val_size={cfg.data.val_size} must be >= 0")
    if not 0.0 < cfg.optim.gamma <= 1.0:
        raise ConfigError(f"optim.gamma={cfg.optim.gamma} must be in (0, 1]")
    for i, width in enumerate(list(cfg.model.hidden) + list(cfg.model.channels) + list(cfg.model.fc)):
        if width <= 0:
            raise ConfigError(f"model widths must be positive, got {width}")
    _check_data_sizes(cfg)
    _check_init_from(cfg)
    _check_model_kwargs(cfg)
    _check_model_builds(cfg)
    if cfg.run_name is not None and (not str(cfg.run_name).strip() or "/" in str(cfg.run_name)
                                     or "\\" in str(cfg.run_name) or str(cfg.run_name) in (".", "..")):
        raise ConfigError(f"run_name={cfg.run_name!r} must be a plain directory name (no '/', not '.' or '..'); "
                          "the run goes under runs_dir")
    if cfg.run_name is not None and len(str(cfg.run_name).encode()) > MAX_RUN_NAME:
        raise ConfigError(f"run_name is {len(str(cfg.run_name).encode())} bytes long; allowed: at most {MAX_RUN_NAME} "
                          "(a directory name, with room for a suffix)")
    if cfg.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise ConfigError("device='cuda' but no CUDA device is available here; allowed: cpu, auto")
    if cfg.logger.mode is not None and cfg.logger.mode not in LOGGER_MODES:
        raise ConfigError(f"logger.mode={cfg.logger.mode!r} is not allowed; allowed: {', '.join(LOGGER_MODES)}, "
                          "null (online with an API key, else offline)")
    if cfg.logger.name == "wandb":
        import importlib.util

        if importlib.util.find_spec("wandb") is None:
            raise ConfigError("logger.name=wandb needs the wandb package: pip install 'bnnrepro[wandb]'")
    if cfg.logger.name == "tensorboard":
        import importlib.util

        if importlib.util.find_spec("tensorboard") is None:
            raise ConfigError("logger.name=tensorboard needs the tensorboard package: pip install tensorboard")


def is_language_model(cfg) -> bool:
    """Whether ``cfg`` trains a language model (``bnnrepro.train.lm``) rather than a classifier."""
    from . import models

    return cfg.model.name in models.LANGUAGE_MODELS


# what the language-model loop does not do: these fields must keep their default there
LM_NEUTRAL = {"data.val_size": None, "data.preprocessing": "scale", "data.image_size": None, "train.amp": "none",
              "train.precision": "fp32", "train.channels_last": False, "train.compile": False}


def _check_language_model(cfg) -> None:
    """A language model trains on a text corpus and a classifier on images; the language-model
    knobs are checked, and the fields that loop has no use for must keep their defaults."""
    from . import data, models

    text = [n for n in data.names() if data.registry.get(n).kind == "text"]
    lm = is_language_model(cfg)
    if lm and cfg.data.name not in text:
        raise ConfigError(f"data.name={cfg.data.name!r} is not a text corpus, and model {cfg.model.name} is a "
                          f"language model; allowed: {', '.join(text)}")
    if not lm:
        if cfg.data.name in text:
            raise ConfigError(f"model.name={cfg.model.name!r} is a classifier, and data.name={cfg.data.name!r} is a "
                              f"text corpus; allowed: {', '.join(models.LANGUAGE_MODELS)}")
        if cfg.train.clip_grad_norm is not None:
            raise ConfigError(f"train.clip_grad_norm={cfg.train.clip_grad_norm!r} is used by the language-model loop "
                              f"only ({', '.join(models.LANGUAGE_MODELS)}); allowed for {cfg.model.name}: null")
        return
    if cfg.train.loss != "cross_entropy":
        raise ConfigError(f"train.loss={cfg.train.loss!r}: a language model's perplexity is exp of its cross "
                          "entropy; allowed: cross_entropy")
    if not isinstance(cfg.train.bptt, int) or isinstance(cfg.train.bptt, bool) or cfg.train.bptt < 1:
        raise ConfigError(f"train.bptt={cfg.train.bptt!r} must be a positive integer (tokens per truncated-BPTT segment)")
    _positive(cfg, "train.clip_grad_norm", allow_none=True)
    for dotted, neutral in LM_NEUTRAL.items():
        if _get(cfg, dotted) != neutral:
            raise ConfigError(f"{dotted}={_get(cfg, dotted)!r} is not used by the language-model loop "
                              f"(model {cfg.model.name}); allowed: {neutral if neutral is not None else 'null'}")


def _check_optimizer(cfg) -> None:
    """What torch's optimizers would reject at the first step, or silently turn into NaN weights."""
    betas = list(cfg.optim.betas)
    if len(betas) != 2 or not all(_number(b) and 0.0 <= b < 1.0 for b in betas):
        raise ConfigError(f"optim.betas={betas!r} must be two numbers in [0, 1)")
    if not _number(cfg.optim.momentum) or not 0.0 <= cfg.optim.momentum < 1.0:
        raise ConfigError(f"optim.momentum={cfg.optim.momentum!r} must be in [0, 1)")
    if not _number(cfg.optim.weight_decay) or cfg.optim.weight_decay < 0:
        raise ConfigError(f"optim.weight_decay={cfg.optim.weight_decay!r} must be a finite number >= 0")


def _check_milestones(cfg) -> None:
    """``optim.milestones``: the epochs after which multistep multiplies the LR by ``optim.gamma``,
    increasing, inside the protocol's ``train.epochs`` (a milestone at or past the end never acts);
    set with another schedule they would be silently ignored."""
    milestones = list(cfg.optim.get("milestones") or [])
    if milestones and cfg.optim.schedule != "multistep":
        raise ConfigError(f"optim.milestones={milestones} is used by optim.schedule=multistep only, not "
                          f"{cfg.optim.schedule}; allowed with {cfg.optim.schedule}: []")
    epochs = cfg.train.epochs
    if any(isinstance(m, bool) or not isinstance(m, int) or not 1 <= m < epochs for m in milestones):
        raise ConfigError(f"optim.milestones={milestones} must be epochs (integers) from 1 to train.epochs - 1 "
                          f"= {epochs - 1}")
    if any(b <= a for a, b in zip(milestones, milestones[1:])):
        raise ConfigError(f"optim.milestones={milestones} must be strictly increasing")


def _check_loader(cfg) -> None:
    """``data.loader=stream`` decodes image folders (imagenet) per batch; its augmentation and worker
    count, and what the memory path cannot do."""
    from . import data

    workers = cfg.data.workers
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 0:
        raise ConfigError(f"data.workers={workers!r} must be an integer >= 0 (0: decode in the training process)")
    loader, augment = cfg.data.loader, cfg.data.augment
    if loader == "stream" and not data.registry.get(cfg.data.name).can_stream:
        streamable = ", ".join(n for n in data.names() if data.registry.get(n).can_stream)
        raise ConfigError(f"data.loader=stream decodes image folders per batch ({streamable}); {cfg.data.name} is "
                          "read whole from its archives: allowed: memory")
    if augment != "none" and loader != "stream":
        raise ConfigError(f"data.augment={augment} needs data.loader=stream (the memory path holds one decoded "
                          "centre crop per image); allowed with data.loader=memory: none")
    if loader == "stream" and cfg.data.preprocessing == "zca":
        raise ConfigError("data.preprocessing=zca is fitted on the whole train split in memory; with "
                          "data.loader=stream allowed: scale, gcn")


def _check_init_from(cfg) -> None:
    """``train.init_from`` names a run directory with a checkpoint, or a checkpoint file (whether its
    layers fit the model is checked when it is loaded). A resumed run does not read it again."""
    from pathlib import Path

    from . import runs
    from .errors import CheckpointError

    source = cfg.train.get("init_from")
    if source is None or cfg.get("resume") is not None:
        return
    if not str(source).strip():
        raise ConfigError("train.init_from is empty: give a run directory or checkpoint file, or leave it null")
    try:
        runs.resolve_checkpoint(Path(str(source)).expanduser(), "best")
    except CheckpointError as err:
        raise ConfigError(f"train.init_from={source!r}: {err}") from None


def _check_data_sizes(cfg) -> None:
    """Split sizes against the official archives' sizes (known without reading them)."""
    from . import data

    spec = data.registry.get(cfg.data.name)
    if cfg.data.use_extra and not spec.supports_extra:
        raise ConfigError(f"data.use_extra=true is only for svhn, not {spec.name}; allowed: false")
    train_size, _, extra_size = spec.sizes
    if not train_size:
        return
    val = spec.default_val_size if cfg.data.val_size is None else int(cfg.data.val_size)
    if val >= train_size:
        raise ConfigError(f"data.val_size={val} leaves no training examples: {spec.name}'s train split has "
                          f"{train_size}; allowed: 0 to {train_size - 1}")
    n_train = train_size - val + (extra_size if cfg.data.use_extra else 0)
    subset = effective_train_subset(cfg)
    n_train = min(n_train, subset) if subset else n_train
    if cfg.train.batch_size > n_train:
        raise ConfigError(f"train.batch_size={cfg.train.batch_size} is larger than the {n_train} training "
                          f"examples (data.val_size, data.train_subset, scale.train_subset); allowed: 1 to {n_train}")


# the share of physical memory a model's training state may take before validation refuses it
MAX_MEMORY_SHARE = 0.9


def _check_model_builds(cfg) -> None:
    """Build the model on torch's meta device (shapes only, no memory): a layer that cannot take the
    dataset's input fails here, before any run directory, and a model whose training state (weights,
    gradients, two optimizer moments) cannot fit in this machine's memory is refused."""
    import torch

    from . import data, models

    spec = data.registry.get(cfg.data.name)
    shape = spec.input_shape if cfg.data.image_size is None else (spec.input_shape[0], int(cfg.data.image_size),
                                                                  int(cfg.data.image_size))
    try:
        with torch.device("meta"):
            model = models.build(cfg.model.name, input_shape=shape, num_classes=spec.num_classes, **model_kwargs(cfg))
    except (ValueError, TypeError, RuntimeError) as err:
        raise ConfigError(f"model.name={cfg.model.name!r} cannot be built for {spec.name} input {tuple(shape)} "
                          f"with these model.* fields: {str(err).splitlines()[0] if str(err) else type(err).__name__}") from None
    n_params = sum(p.numel() for p in model.parameters())
    need = 4 * 4 * n_params
    try:
        have = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return
    if need > MAX_MEMORY_SHARE * have:
        raise ConfigError(f"model {cfg.model.name} has {n_params:,} parameters: about {need / 2**30:.1f} GiB of "
                          f"weights, gradients and optimizer state, more than this machine's {have / 2**30:.1f} GiB "
                          "(model.hidden / model.channels / model.fc / model.width_mult / scale.width_mult)")


def _check_model_kwargs(cfg) -> None:
    """Model-specific fields are checked against the model factory's signature; nothing is built."""
    from . import models

    params = inspect.signature(models.MODELS[cfg.model.name]).parameters
    if cfg.model.variant is not None and "variant" not in params:
        raise ConfigError(f"model.variant={cfg.model.variant!r} is not used by model {cfg.model.name!r}")
    try:
        model_kwargs(cfg)
    except ValueError as err:
        raise ConfigError(str(err)) from None


# ------------------------------------------------------------ what a config asks for, scale applied

def effective_width_mult(cfg) -> float:
    return float(cfg.model.width_mult) * float(cfg.scale.width_mult)


def effective_dropout_hidden(cfg) -> float:
    cap = cfg.scale.get("max_dropout_hidden")
    return float(cfg.model.dropout_hidden) if cap is None else min(float(cfg.model.dropout_hidden), cap)


def effective_epochs(cfg) -> int:
    return int(min(cfg.train.epochs, cfg.scale.epochs)) if cfg.scale.epochs else int(cfg.train.epochs)


def schedule_epochs(cfg) -> int:
    """The epochs the LR schedule is laid over: the paper's (truncate) or the run's (compress)."""
    return int(cfg.train.epochs) if cfg.scale.schedule == "truncate" else effective_epochs(cfg)


def effective_train_subset(cfg):
    limits = [n for n in (cfg.data.train_subset, cfg.scale.train_subset) if n]
    return min(limits) if limits else None


# the quant keys added with the quantizer scheme; a run recorded before them has none of them
SCHEME_KEYS = ("gradient_kwargs", "first_layer", "last_layer", "first_input", "last_input", "last_input_kwargs")
# what the models did, before those keys existed, that the keys now say (tensorpack's float conv0 and
# fct in the DoReFa models; the LSTM's float decoder; DoReFa's clipped, unquantized last-layer input)
_FLOAT_FIRST = ("dorefa_svhn", "dorefa_alexnet")
_FLOAT_LAST = ("dorefa_svhn", "dorefa_alexnet", "lstm_lm")
_UNQUANTIZED_LAST_INPUT = ("mlp", "dorefa_svhn", "dorefa_alexnet")


def quant_section(cfg) -> dict:
    """``cfg.quant`` as a plain dict; for a config recorded before the scheme's role keys existed
    (an old run's config.yaml or checkpoint) the role keys its model implied then, so that an old
    run rebuilds the net it trained."""
    q = OmegaConf.to_container(cfg.quant, resolve=True) if isinstance(cfg.quant, DictConfig) else dict(cfg.quant)
    if any(k in q for k in SCHEME_KEYS):
        return q
    name = cfg.model.name
    legacy = {"first_layer": "float" if name in _FLOAT_FIRST else "quantized",
              "last_layer": "float" if name in _FLOAT_LAST else "quantized"}
    if name in _UNQUANTIZED_LAST_INPUT and q.get("activation") == "dorefa_activation":
        legacy["last_input_kwargs"] = {"quantize": False}
    elif name in _FLOAT_FIRST:
        legacy["last_input"] = "identity"  # the DoReFa nets had no activation there unless DoReFa's
    return {**q, **legacy}


def model_kwargs(cfg) -> dict:
    """The model factory's keywords: the model section's fields the factory takes (scale applied)
    and ``quant``, the :class:`QuantScheme` of the ``quant`` section."""
    from . import models

    section = dict(
        hidden=tuple(cfg.model.hidden), channels=tuple(cfg.model.channels), fc=tuple(cfg.model.fc),
        width_mult=effective_width_mult(cfg), dropout_in=cfg.model.dropout_in,
        dropout_hidden=effective_dropout_hidden(cfg), bias=cfg.model.bias, init=cfg.model.init,
        batchnorm=cfg.model.batchnorm, bn_eps=cfg.model.bn_eps, bn_momentum=cfg.model.bn_momentum,
        variant=cfg.model.variant, output_batchnorm=cfg.model.get("output_batchnorm", "same"),
        embed_dim=cfg.model.get("embed_dim"),
    )
    name = cfg.model.name
    params = inspect.signature(models.MODELS[name]).parameters
    # options the model does not have must be at their neutral value, or the config asks for
    # something the model would silently not do
    if section["embed_dim"] is not None and "embed_dim" not in params:
        raise ValueError(f"model.embed_dim={section['embed_dim']!r} is not used by model {name!r}; allowed: null")
    if section["embed_dim"] is not None and (isinstance(section["embed_dim"], bool) or section["embed_dim"] < 1):
        raise ValueError(f"model.embed_dim={section['embed_dim']!r} must be a positive integer or null")
    if "batchnorm" not in params and section["batchnorm"] != "standard":
        raise ValueError(f"model.batchnorm={section['batchnorm']!r} is not supported by model {name!r}; "
                         "allowed: standard")
    if "output_batchnorm" not in params and section["output_batchnorm"] != "same":
        raise ValueError(f"model.output_batchnorm={section['output_batchnorm']!r} is not supported by model "
                         f"{name!r}; allowed: same")
    scheme = QuantScheme.from_config(quant_section(cfg))
    if name in models.NO_GRADIENT_QUANT and scheme.gradient.cls.kind != "identity":
        raise ValueError(f"quant.gradient={cfg.quant.gradient!r} is not supported by model {name!r}; "
                         "allowed: identity")
    # unset (None) fields fall back to the factory's own defaults
    kwargs = {k: v for k, v in section.items() if k in params and v is not None}
    return {**kwargs, "quant": scheme}
