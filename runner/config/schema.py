"""Every key of every built-in option, declared once: its type, default and check.

One dataclass per option (trainer, lr_find, each model, optimizer, data set and logger);
a field's default is the value conf/<group>/<option>.yaml gives it (the YAML keeps the
comments users read, a test keeps the two equal) and its metadata holds its check, one of
the shared helpers in schedulers/checks.py. `check_node` (schedulers/declare.py, the same
machinery the scheduler registry declares each schedule with) walks a node against its
schema in one pass: unknown keys, missing keys, each value, then the schema's `check_keys`.
Checks that involve the machine (a dataset root on disk, CUDA present) stay with the code
that knows them.

The dataclasses are not registered in Hydra's ConfigStore as typed schemas on purpose:
OmegaConf's typed nodes coerce values ("yes", "on", 1 -> True for a bool), so
`trainer.amp=yes` would pass silently; checked here, it is a config error naming the key.
Scheduler keys are declared the same way, one dataclass per schedule, in
schedulers/registry.py.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from schedulers import ConfigError
from schedulers.binder import plain
from schedulers.checks import (
    MODES,
    anything,
    auto_or_int,
    boolean,
    choice,
    int_list,
    integer,
    matches,
    need_int_list,
    need_mode,
    number,
    str_list,
    text,
)
from schedulers.declare import check_node as check_node  # the runner's callers import it here
from schedulers.declare import defaults as defaults
from schedulers.declare import key, typed

EPOCH_METRICS = ("train/loss", "train/acc", "val/loss", "val/acc")  # what may be monitored
AVG_METRICS = ("val_avg/loss", "val_avg/acc")  # the averaged model's (trainer.average)
SEED_MAX = 2**32 - 1  # numpy's np.random.seed (and scikit-learn's random_state) take no more
MAX_EPOCHS = 1_000_000  # validation steps through every epoch of a schedule (lr_lambda, _target_)
_DEVICE = r"auto|cpu|mps|cuda(:\d+)?"


def kept_epochs(key: str, v: Any) -> None:
    """trainer.keep_epochs: null, N >= 1 (every N epochs), or a list of epochs >= 1."""
    if v is None or (isinstance(v, int) and not isinstance(v, bool) and v >= 1):
        return
    if isinstance(v, (int, str, Mapping)):
        raise ConfigError(key, v, "must be null, N >= 1 (every N epochs) or a list of epochs >= 1")
    need_int_list(key, v, 1)


# -- trainer and the LR range test --------------------------------------------------------------
@dataclass
class Trainer:
    device: str = key("auto", matches(_DEVICE, "must be auto, cpu, mps, cuda or cuda:N"))
    strategy: str = key("auto", choice("auto", "single", "ddp"))
    amp: bool = key(False, boolean())
    channels_last: Any = key("auto", choice("auto", True, False))
    compile: bool = key(False, boolean())
    # torch's CPU threads; auto: what `python -m runner` itself uses, in joblib workers too
    num_threads: Any = key("auto", auto_or_int(1))
    deterministic: bool = key(False, boolean())
    log_every_n_steps: int = key(50, integer(0))
    progress: str = key("auto", choice("auto", "bar", "line"))
    checkpoint: bool = key(True, boolean())
    checkpoint_interval_s: float = key(1.0, number(0))
    # best.pt: full (a resumable checkpoint) | weights (the model's, its epoch, the config)
    # | false (none); last.pt keeps everything for resume= either way
    save_best: Any = key("weights", choice("full", "weights", False))
    # auto: val/loss for a language model (runner/train/lm.py), else val/acc
    monitor: str = key("auto", choice("auto", *EPOCH_METRICS, *AVG_METRICS))
    # auto: max for an accuracy, min for a loss (schedulers.checks.mode_for); checked
    # against monitor below
    monitor_mode: str = key("auto", choice(*MODES))
    diverge_loss: float | None = key(None, number(0, lo_open=True, optional=True))
    # gradient clipping before each optimizer step, by the global norm or per element
    # (null = off; one of the two, as Lightning's gradient_clip_algorithm)
    grad_clip_norm: float | None = key(None, number(0, lo_open=True, optional=True))
    grad_clip_value: float | None = key(None, number(0, lo_open=True, optional=True))
    accumulate: int = key(1, integer(1))  # micro-batches per optimizer step
    label_smoothing: float = key(0.0, number(0, 1, hi_open=True))  # the training loss only
    # a schedule-free optimizer on a model with BatchNorm: training batches that recompute
    # the running statistics at its eval weights before each validation (0 = off)
    bn_recalibrate_batches: int = key(50, integer(0))
    # epochs whose checkpoint is kept as epoch_<k>.pt (a list, or N: every N epochs): the
    # points other runs may branch from (branch=<this run dir> branch_epoch=<k>)
    keep_epochs: Any = key(None, kept_epochs)
    # weight averaging beside the trained model (runner/train/averaging.py): none | ema
    # (every optimizer step) | swa (end-of-epoch weights from swa_start, 0-based epoch;
    # null = the last quarter), optionally at a constant swa_lr (torch SWALR)
    average: str = key("none", choice("none", "ema", "swa"))
    ema_decay: float = key(0.999, number(0, 1, lo_open=True, hi_open=True))
    swa_start: int | None = key(None, integer(0, optional=True))
    swa_lr: float | None = key(None, number(0, lo_open=True, optional=True))

    @staticmethod
    def check_keys(prefix: str, node: Mapping[str, Any]) -> None:
        """What ties keys together: a mode that contradicts its metric; two clippings; an
        averaged model's metric monitored without one."""
        mode, metric = node["monitor_mode"], node["monitor"]
        if metric == "auto" and mode != "auto":
            raise ConfigError(
                f"{prefix}.monitor_mode",
                mode,
                f"{prefix}.monitor=auto picks its metric and its direction: name the metric "
                f"(e.g. {prefix}.monitor=val/loss) or leave {prefix}.monitor_mode auto",
            )
        if metric != "auto":
            need_mode(f"{prefix}.monitor_mode", mode, metric, f"{prefix}.monitor")
        if metric in AVG_METRICS and node["average"] == "none":
            raise ConfigError(
                f"{prefix}.monitor",
                metric,
                f"needs an averaged model: set {prefix}.average to ema or swa (or monitor val/*)",
            )
        if node["grad_clip_norm"] is not None and node["grad_clip_value"] is not None:
            raise ConfigError(
                f"{prefix}.grad_clip_value",
                node["grad_clip_value"],
                f"set one of {prefix}.grad_clip_norm and {prefix}.grad_clip_value (the other null)",
            )


@dataclass
class LrFind:
    start_lr: float = key(1e-6, number(0, lo_open=True))
    end_lr: float = key(10.0, number(0, lo_open=True))
    num_iters: int = key(100, integer(10))
    mode: str = key("exp", choice("exp", "linear"))
    smooth: float = key(0.9, number(0, 1, hi_open=True))
    diverge_threshold: float = key(4.0, number(1, lo_open=True))
    val_every: int = key(0, integer(0))
    suggestion: str = key("min_loss_div_10", choice("steepest", "valley", "min_loss_div_10"))


# -- models -------------------------------------------------------------------------------------
@dataclass
class Mlp:
    name: str = key("mlp", choice("mlp"))
    hidden: list[int] = key([256], int_list(1))
    dropout: float = key(0.0, number(0, 1, hi_open=True))


@dataclass
class LeNet:
    name: str = key("lenet", choice("lenet"))
    # two 5x5 convs with 2x2 pools leave nothing of an image below 16 px
    min_input_size: int = key(32, integer(16))


@dataclass
class Logistic:
    name: str = key("logistic", choice("logistic"))


@dataclass
class Cnn1d:
    name: str = key("cnn1d", choice("cnn1d"))
    channels: int = key(25, integer(1, high=4096))
    kernel_sizes: list[int] = key([5, 3, 3], int_list(1))
    stride: int = key(2, integer(1))


@dataclass
class Gru:
    name: str = key("gru", choice("gru"))
    hidden_size: int = key(6, integer(1, high=4096))
    bidirectional: bool = key(True, boolean())


@dataclass
class Gpt:
    """runner/train/gpt.py; block_size and the vocabulary come from the data."""

    name: str = key("gpt", choice("gpt"))
    n_layer: int = key(4, integer(1, high=1024))
    n_head: int = key(4, integer(1, high=1024))
    n_embd: int = key(128, integer(1, high=65536))
    dropout: float = key(0.0, number(0, 1, hi_open=True))
    bias: bool = key(False, boolean())

    @staticmethod
    def check_keys(prefix: str, node: Mapping[str, Any]) -> None:
        """Each head gets n_embd / n_head channels: the split must be exact."""
        if node["n_embd"] % node["n_head"]:
            raise ConfigError(
                f"{prefix}.n_head",
                node["n_head"],
                f"must divide {prefix}.n_embd={node['n_embd']} (each head's width)",
            )


@dataclass
class ResNet18:
    name: str = key("resnet18", choice("resnet18"))
    small_input_stem: Any = key("auto", choice("auto", True, False))


# -- optimizers (a `_target_` optimizer's keys are bound to its own signature instead) ----------
_LR = number(0, lo_open=True)  # `find` is allowed too: see runner/run/check.py


@dataclass
class Sgd:
    name: str = key("sgd", choice("sgd"))
    lr: Any = key(0.05, anything())
    momentum: float = key(0.9, number(0, 1, hi_open=True))
    weight_decay: float = key(0.0, number(0))
    nesterov: bool = key(False, boolean())
    # checked against the model: runner/train/optimizers.py
    param_groups: Any = key(None, anything())
    # null: the model's default (true for model=gpt, else false): runner/train/optimizers.py
    no_decay: bool | None = key(None, choice(None, True, False))


@dataclass
class Adam:
    name: str = key("adam", choice("adam"))
    lr: Any = key(0.001, anything())
    betas: list[float] = key([0.9, 0.999], anything())  # two numbers: runner/train/optimizers.py
    eps: float = key(1e-8, number(0, lo_open=True))
    weight_decay: float = key(0.0, number(0))
    param_groups: Any = key(None, anything())
    # null: the model's default (true for model=gpt, else false): runner/train/optimizers.py
    no_decay: bool | None = key(None, choice(None, True, False))


@dataclass
class AdamW(Adam):
    name: str = key("adamw", choice("adamw"))
    weight_decay: float = key(0.01, number(0))


@dataclass
class SgdScheduleFree:
    """schedulefree.SGDScheduleFree (Defazio et al. 2024): no lr schedule (scheduler=none),
    its own linear warmup, evaluated at the average of its iterates."""

    name: str = key("schedulefree_sgd", choice("schedulefree_sgd"))
    lr: Any = key(0.5, anything())
    # its interpolation between the average and the SGD iterate, in (0, 1)
    momentum: float = key(0.9, number(0, 1, lo_open=True, hi_open=True))
    weight_decay: float = key(0.0, number(0))
    warmup_steps: int = key(0, integer(0))  # optimizer steps of linear warmup
    r: float = key(0.0, number(0))  # polynomial weighting (k+1)^r of the average
    weight_lr_power: float = key(2.0, number(0))  # average weighted by lr^power (warmup)
    param_groups: Any = key(None, anything())
    # null: the model's default (true for model=gpt, else false): runner/train/optimizers.py
    no_decay: bool | None = key(None, choice(None, True, False))


@dataclass
class AdamWScheduleFree(Adam):
    """schedulefree.AdamWScheduleFree: Adam's keys (its betas' first one the interpolation,
    as SgdScheduleFree's momentum) with SgdScheduleFree's warmup and averaging."""

    name: str = key("schedulefree_adamw", choice("schedulefree_adamw"))
    lr: Any = key(0.0025, anything())
    warmup_steps: int = key(0, integer(0))
    r: float = key(0.0, number(0))
    weight_lr_power: float = key(2.0, number(0))


# -- data ---------------------------------------------------------------------------------------
@dataclass
class Digits:
    name: str = key("digits", choice("digits"))
    num_classes: int = key(10, choice(10))
    batch_size: int = key(64, integer(1))
    val_fraction: float = key(0.2, number(0, 1, lo_open=True, hi_open=True))
    split_seed: int = key(0, integer(0, high=SEED_MAX))


@dataclass
class Fake:
    name: str = key("fake", choice("fake"))
    batch_size: int = key(32, integer(1))
    train_size: int = key(256, integer(1))
    val_size: int = key(64, integer(1))
    image_size: list[int] = key([3, 32, 32], int_list(1, length=3))
    num_classes: int = key(10, integer(2))


@dataclass
class Mnist1d:
    name: str = key("mnist1d", choice("mnist1d"))
    root: str = key("data", text())  # the generated set is cached under <root>/mnist1d/
    num_classes: int = key(10, choice(10))
    batch_size: int = key(100, integer(1))
    # the generator's arguments (mnist1d.data.get_dataset_args), its defaults
    num_samples: int = key(5000, integer(10, high=10_000_000))
    train_split: float = key(0.8, number(0, 1, lo_open=True, hi_open=True))
    padding: list[int] = key([36, 60], int_list(0, length=2))
    scale_coeff: float = key(0.4, number(0, 1.9))
    max_translation: int = key(48, integer(1))
    corr_noise_scale: float = key(0.25, number(0))
    iid_noise_scale: float = key(0.02, number(0))
    shear_scale: float = key(0.75, number(0))
    shuffle_seq: bool = key(False, boolean())
    final_seq_length: int = key(40, integer(1, high=100_000))
    seed: int = key(42, integer(0, high=SEED_MAX))


@dataclass
class Mnist:
    name: str = key("mnist", choice("mnist"))
    root: str = key("data", text())
    num_classes: int = key(10, choice(10))
    batch_size: int = key(128, integer(1))
    limit: int | None = key(None, integer(1, optional=True))


@dataclass
class FashionMnist(Mnist):
    name: str = key("fashion_mnist", choice("fashion_mnist"))


@dataclass
class Cifar10(Mnist):
    name: str = key("cifar10", choice("cifar10"))
    augment: bool = key(False, boolean())


@dataclass
class Dataset:
    """data=dataset: any torch Dataset by `_target_`, streamed (runner/data/stream.py)."""

    name: str = key("dataset", choice("dataset"))
    # `_target_` nodes (a Dataset class and its kwargs; null: stream.DEMO's FakeData), checked
    # in runner/data/stream.py
    train: Any = key(None, anything())
    val: Any = key(None, anything())
    # a share of data.train to validate on instead of data.val (which must be null then)
    val_fraction: float | None = key(None, number(0, 1, lo_open=True, hi_open=True, optional=True))
    split_seed: int = key(0, integer(0, high=SEED_MAX))  # draws data.val_fraction's split
    num_classes: int | None = key(None, integer(2, optional=True))  # null: from the train set
    batch_size: int = key(32, integer(1))
    num_workers: int = key(0, integer(0, high=1024))
    pin_memory: Any = key("auto", choice("auto", True, False))
    persistent_workers: bool = key(False, boolean())
    prefetch_factor: int | None = key(None, integer(1, optional=True))
    collate_fn: Any = key(None, anything())  # null or a `_target_` node
    in_memory: Any = key("auto", choice("auto", True, False))


@dataclass
class Text:
    """data=text: byte-level text for language models (runner/data/text.py)."""

    name: str = key("text", choice("text"))
    path: str | None = key(None, text(optional=True))  # a file or folder; null: bundled source
    num_classes: int = key(256, choice(256))  # the vocabulary: byte values
    block_size: int = key(128, integer(1, high=1_000_000))
    batch_size: int = key(32, integer(1))
    val_fraction: float = key(0.05, number(0, 1, lo_open=True, hi_open=True))
    val_tokens: int | None = key(8192, integer(2, optional=True))
    tokens_per_epoch: int | None = key(16384, integer(1, optional=True))
    cache_dir: str = key("data/cache", text())
    source_tokens: int = key(2_097_152, integer(2, high=2**34))
    source_seed: int = key(0, integer(0, high=SEED_MAX))


# -- loggers: the logger node holds one sub-node per backend (logger=[wandb,tensorboard]) -----
@dataclass
class Wandb:
    mode: str = key("offline", choice("offline", "online", "disabled"))
    project: str = key("schedlab", text())
    entity: str | None = key(None, text(optional=True))
    group: str | None = key(None, text(optional=True))
    tags: list[str] = key([], str_list())
    run_name: str | None = key(None, text(optional=True))
    # mode online: how long wandb.init may wait for the server before the run goes on
    # without W&B (one warning); offline and disabled never wait for a network
    init_timeout_s: float = key(10.0, number(0, lo_open=True))


@dataclass
class TensorBoard:
    dir: str = key("tensorboard", text())
    flush_secs: int = key(10, integer(1))


@dataclass
class Run:
    """The top-level keys; the groups have their own tables below."""

    seed: int = key(0, integer(0, high=SEED_MAX))
    epochs: int = key(20, integer(1, high=MAX_EPOCHS))
    # the run's folder under outputs/runs/ (null: the experiment's, else <model>-<scheduler>)
    name: str | None = key(None, text(optional=True))
    resume: Any = key(None, anything())  # a run dir or true: checked when resuming
    # a trunk run dir to branch from, at its kept epoch branch_epoch (null: the latest kept
    # epoch up to which this run's schedule is the trunk's): runner/run/branch.py
    branch: str | None = key(None, text(optional=True))
    branch_epoch: int | None = key(None, integer(1, optional=True))


# the group options without a registry of their own (models and optimizers name their
# schema in runner/train/models.py's and runner/train/optimizers.py's tables)
SCHEMAS: dict[str, dict[str, type]] = {
    "data": {
        "digits": Digits,
        "fake": Fake,
        "mnist1d": Mnist1d,
        "mnist": Mnist,
        "fashion_mnist": FashionMnist,
        "cifar10": Cifar10,
        "dataset": Dataset,
        "text": Text,
    },  # fmt: skip
    "trainer": {"default": Trainer},
    "lr_find": {"default": LrFind},
    "logger": {"wandb": Wandb, "tensorboard": TensorBoard},
}
GROUPS = ("model", "optimizer", "scheduler", "data", "logger", "trainer", "lr_find")


@dataclass(frozen=True)
class RunSpec:
    """A validated config, typed: what the builders (runner/train/builders.py), the range
    test, the engine and the loop read, instead of the DictConfig passed down through every
    layer. Made once (`run_spec`) after the run's config is final (validated, resume
    applied, the range test's lr set). trainer and lr_find are their schemas' instances;
    the other groups hold `_target_` components too, so they are plain dicts with every
    `${...}` resolved (their keys were checked against their option's schema or target)."""

    seed: int
    epochs: int
    trainer: Trainer
    lr_find: LrFind
    data: dict[str, Any]
    model: dict[str, Any]
    optimizer: dict[str, Any]
    scheduler: dict[str, Any]
    logger: dict[str, Any] = field(default_factory=dict)


def run_spec(cfg: Mapping[str, Any]) -> RunSpec:
    """The typed form of a config `runner.run.check.validate` passed (an OmegaConf node,
    or plain values)."""
    return typed_run(plain(cfg))


def yaml_text(cfg: Any) -> str:
    """A run's config.yaml text (kept in each checkpoint too) from its config: an OmegaConf
    node or its resolved plain values (the same text). Beside `typed_run`: a run makes both
    from its final config's plain values, one after the other (runner/run/train.py)."""
    from omegaconf import OmegaConf  # ~50 ms: as binder.plain, only once a config is written

    return OmegaConf.to_yaml(cfg, resolve=True)


def typed_run(values: Mapping[str, Any]) -> RunSpec:
    """`run_spec` of a config already resolved into plain values (`plain`): a run's, once
    its config is final (runner/run/train.py), so that it is not converted again."""
    return RunSpec(
        seed=values["seed"],
        epochs=values["epochs"],
        trainer=typed(values["trainer"], Trainer),
        lr_find=typed(values["lr_find"], LrFind),
        data=values["data"],
        model=values["model"],
        optimizer=values["optimizer"],
        scheduler=values["scheduler"],
        logger=values.get("logger") or {},
    )
