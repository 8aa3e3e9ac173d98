"""RangerConfig and RangerMixin: RAdam, Ranger or an Adam baseline from hyperparameters."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass
from typing import Any, Literal, TypeVar, get_args

import torch
from lightning.pytorch import Callback, LightningModule
from lightning.pytorch.utilities import AttributeDict, rank_zero_warn
from torch import nn

from lightning_ranger._namespaces import lightning_isinstance
from lightning_ranger.callbacks.gradient_centralization import GradientCentralization
from lightning_ranger.callbacks.lookahead import Lookahead
from lightning_ranger.callbacks.rectification_monitor import RectificationMonitor
from lightning_ranger.callbacks.slow_weight_swap import SlowWeightSwap
from lightning_ranger.optim.radam import RAdam, validate_options
from lightning_ranger.optim.schedules import (
    LRSchedule,
    ScheduleName,
    build_scheduler,
    check_schedule_options,
)

__all__ = ["RangerConfig", "RangerMixin"]

OptimizerName = Literal["radam", "ranger", "adam", "adamw"]
OPTIMIZERS: tuple[OptimizerName, ...] = get_args(OptimizerName)
NORMALIZATION_LAYERS: tuple[type[nn.Module], ...] = (
    nn.modules.batchnorm._NormBase,
    nn.LayerNorm,
    nn.GroupNorm,
    nn.RMSNorm,
)


@dataclass(frozen=True)
class RangerConfig:
    """What :class:`RangerMixin` builds: the optimizer, its schedule and its callbacks.

    Args:
        optimizer: ``"ranger"`` (RAdam + Lookahead), ``"radam"``, or the baselines ``"adam"`` (L2
            weight decay) and ``"adamw"`` (decoupled weight decay), from ``torch.optim``.
        lr: the peak learning rate, ``> 0``.
        betas: decay rates of the moments, each in ``[0, 1)``.
        eps: the denominator's epsilon, ``>= 0``.
        weight_decay: ``>= 0``.
        decoupled_weight_decay: RAdam/Ranger only: AdamW-style decay instead of L2.
        rectify_threshold: RAdam/Ranger only: rectify while ``rho_t`` exceeds it, ``>= 4``.
        k: Ranger only: optimizer steps between Lookahead syncs, a positive int.
        alpha: Ranger only: Lookahead's slow-weight step, in ``(0, 1]``.
        no_decay_norm_and_bias: when ``weight_decay > 0``, put biases, other 1-D parameters and
            normalization weights in a param group named ``"no_decay"`` without weight decay.
        schedule: ``"constant"``, ``"linear_warmup"``, ``"flat_cosine"`` or ``"cosine"``, stepped
            per optimizer step (see :class:`~lightning_ranger.optim.schedules.LRSchedule`).
        warmup_steps: a linear warmup from 0 over this many optimizer steps, first in every
            schedule.
        flat_fraction: the share of the post-warmup steps that ``"flat_cosine"`` keeps flat.
        slow_weight_eval: Ranger only: validate, test and predict on the slow weights
            (:class:`~lightning_ranger.callbacks.slow_weight_swap.SlowWeightSwap`).
        monitor: log RAdam's rectification statistics
            (:class:`~lightning_ranger.callbacks.rectification_monitor.RectificationMonitor`).
        gradient_centralization: centralize the gradients of conv and linear weights before
            every optimizer step (:class:`~lightning_ranger.callbacks.GradientCentralization`),
            as the 2020 Ranger optimizer did by default. Off here: it changes the optimizer's
            trajectory, and the RAdam and Lookahead papers do not use it.

    Raises:
        ValueError: naming the field and its accepted values, for any field outside them.

    Example::

        >>> RangerConfig(optimizer="radam", lr=3e-3, schedule="cosine").lr
        0.003

    """

    optimizer: OptimizerName = "ranger"
    lr: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    weight_decay: float = 0.0
    decoupled_weight_decay: bool = False
    rectify_threshold: float = 5.0
    k: int = 6
    alpha: float = 0.5
    no_decay_norm_and_bias: bool = True
    schedule: ScheduleName = "constant"
    warmup_steps: int = 0
    flat_fraction: float = 0.72
    slow_weight_eval: bool = True
    monitor: bool = True
    gradient_centralization: bool = False

    def __post_init__(self) -> None:
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"`optimizer` must be one of {OPTIMIZERS}, got {self.optimizer!r}")
        if isinstance(self.betas, list):  # from YAML or a checkpoint's plain data
            object.__setattr__(self, "betas", tuple(self.betas))
        if not isinstance(self.lr, (int, float)) or not self.lr > 0:
            raise ValueError(f"`lr` must be a float > 0, got {self.lr!r}")
        try:
            validate_options(
                lr=self.lr,
                betas=self.betas,
                eps=self.eps,
                weight_decay=self.weight_decay,
                decoupled_weight_decay=self.decoupled_weight_decay,
                rectify_threshold=self.rectify_threshold,
            )
            if self.optimizer == "ranger":
                Lookahead(k=self.k, alpha=self.alpha)  # its own checks of k and alpha
        except TypeError as err:  # a config arrives from files and the CLI: one kind of error
            raise ValueError(str(err)) from err
        for flag in (
            "no_decay_norm_and_bias",
            "slow_weight_eval",
            "monitor",
            "gradient_centralization",
        ):
            if not isinstance(getattr(self, flag), bool):
                raise ValueError(f"`{flag}` must be a bool, got {getattr(self, flag)!r}")
        check_schedule_options(self.schedule, self.warmup_steps, self.flat_fraction)

    @classmethod
    def from_value(cls, value: RangerConfig | Mapping[str, Any]) -> RangerConfig:
        """A config from a ``RangerConfig`` or a mapping of its fields (YAML, a checkpoint).

        Raises:
            ValueError: for another type, an unknown field, or a field outside its values.

        """
        if isinstance(value, RangerConfig):
            return value
        if not isinstance(value, Mapping):
            raise ValueError(
                f"the `ranger` hyperparameter must be a RangerConfig or a dict of its fields, "
                f"got {type(value).__name__}"
            )
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(value) - fields)
        if unknown:
            raise ValueError(f"unknown `ranger` fields {unknown}; the fields are {sorted(fields)}")
        return cls(**value)

    def as_dict(self) -> dict[str, Any]:
        """The fields as plain data (a list for ``betas``): safe YAML, and loadable with
        ``weights_only=True``; :meth:`from_value` reads it back.

        Example::

            >>> config = RangerConfig(optimizer="radam", betas=(0.8, 0.99))
            >>> config.as_dict()["betas"]
            [0.8, 0.99]
            >>> RangerConfig.from_value(config.as_dict()) == config
            True

        """
        data = dataclasses.asdict(self)
        data["betas"] = list(self.betas)
        return data


class RangerMixin:
    """Configure RAdam, Ranger (RAdam + Lookahead) or an Adam baseline from a hyperparameter.

    Put it before ``LightningModule`` (of ``lightning.pytorch`` or ``pytorch_lightning``) in the
    bases. The config comes from the hyperparameter ``ranger`` (a :class:`RangerConfig` or a dict
    of its fields, as ``load_from_checkpoint`` passes it); override :meth:`ranger_config` to
    supply it otherwise. Without one the defaults are used, with a one-time warning. Annotate the
    argument ``ranger: RangerConfig | None`` so that LightningCLI checks every field, the
    optimizer's name included, when it parses the command line.

    :attr:`hparams` and :attr:`hparams_initial` hold every ``RangerConfig`` as plain data
    (:meth:`RangerConfig.as_dict`): the logger's ``hparams.yaml`` is plain YAML that
    ``load_hparams_from_yaml`` reads back, and checkpoints load with ``weights_only=True``.

    - :meth:`configure_optimizers` builds the optimizer over ``self.parameters()`` (biases and
      normalization weights without weight decay, see ``no_decay_norm_and_bias``) and, when a
      schedule or a warmup is set, a per-step ``LambdaLR`` whose horizon is
      ``trainer.estimated_stepping_batches``.
    - :meth:`configure_callbacks` returns ``Lookahead(k, alpha)`` for ``"ranger"``, plus
      ``SlowWeightSwap()`` when ``slow_weight_eval``, plus ``RectificationMonitor()`` when
      ``monitor``, plus ``GradientCentralization()`` when ``gradient_centralization``. A subclass
      with its own ``configure_optimizers`` still gets them. Lightning lets these replace trainer
      callbacks of the same type; a replaced ``Lookahead`` with other settings is reported in a
      warning.

    Example::

        import lightning as L
        import torch
        from lightning_ranger import RangerConfig, RangerMixin

        class Net(RangerMixin, L.LightningModule):
            def __init__(self, ranger: RangerConfig | None = None):
                super().__init__()
                self.save_hyperparameters()
                self.layer = torch.nn.Linear(32, 2)

            def training_step(self, batch, batch_idx):
                return self.layer(batch).sum()

        model = Net(RangerConfig(optimizer="ranger", lr=1e-3, schedule="flat_cosine"))

    """

    _ranger_default_warned = False

    @property
    def hparams(self) -> AttributeDict | MutableMapping:
        """LightningModule's ``hparams``, with each ``RangerConfig`` as a dict of its fields."""
        return _plain_configs(super().hparams)  # type: ignore[misc]

    @property
    def hparams_initial(self) -> AttributeDict:
        """LightningModule's ``hparams_initial`` (what loggers record), with each
        ``RangerConfig`` as a dict of its fields."""
        return _plain_configs(super().hparams_initial)  # type: ignore[misc]

    def ranger_config(self) -> RangerConfig:
        """The config, from ``self.hparams["ranger"]``; override to supply it another way.

        Raises:
            ValueError: if the hyperparameter is neither a ``RangerConfig`` nor a dict of its
                fields, or a field is outside its accepted values.

        """
        hparams = self._lightning_module.hparams
        value = hparams.get("ranger")
        if value is None:
            if not self._ranger_default_warned:
                rank_zero_warn(
                    f"{type(self).__name__} has no `ranger` hyperparameter: using RangerConfig() "
                    "defaults (Ranger, lr=1e-3). Pass `ranger=...` and call "
                    "`self.save_hyperparameters()`, or override `ranger_config()`."
                )
                self._ranger_default_warned = True
            return RangerConfig()
        config = RangerConfig.from_value(value)
        hparams["ranger"] = config.as_dict()
        return config

    @property
    def _lightning_module(self) -> LightningModule:
        if not lightning_isinstance(self, "LightningModule"):
            raise TypeError(
                f"{type(self).__name__} is not a LightningModule: RangerMixin goes first in the "
                "bases of a LightningModule, `class Net(RangerMixin, LightningModule)`"
            )
        return self  # type: ignore[return-value]

    def configure_optimizers(self) -> Any:
        """The configured optimizer, with a per-step scheduler when a schedule or warmup is set.

        Raises:
            ValueError: if a cosine schedule has no finite horizon (no ``max_steps`` or
                ``max_epochs``), or ``warmup_steps`` exceeds the run's optimizer steps.

        """
        config = self.ranger_config()
        module = self._lightning_module
        optimizer = _build_optimizer(config, module)
        if config.schedule == "constant" and config.warmup_steps == 0:
            return optimizer
        schedule = LRSchedule(
            config.schedule,
            warmup_steps=config.warmup_steps,
            total_steps=module.trainer.estimated_stepping_batches,
            flat_fraction=config.flat_fraction,
        )
        scheduler = build_scheduler(optimizer, schedule)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step", "frequency": 1},
        }

    def configure_callbacks(self) -> list[Callback]:
        """Lookahead and SlowWeightSwap for Ranger, the RectificationMonitor and
        GradientCentralization, as the config says."""
        config = self.ranger_config()
        callbacks: list[Callback] = []
        if config.optimizer == "ranger":
            lookahead = Lookahead(k=config.k, alpha=config.alpha)
            _warn_if_replacing(self._lightning_module, lookahead)
            callbacks.append(lookahead)
            if config.slow_weight_eval:
                callbacks.append(SlowWeightSwap())
        if config.monitor:
            callbacks.append(RectificationMonitor())
        if config.gradient_centralization:
            callbacks.append(GradientCentralization())
        return callbacks


def _warn_if_replacing(module: LightningModule, lookahead: Lookahead) -> None:
    try:
        trainer = module.trainer
    except RuntimeError:  # not attached to a Trainer: nothing to replace
        return
    for callback in trainer.callbacks:  # type: ignore[attr-defined]
        if isinstance(callback, Lookahead) and (callback.k, callback.alpha) != (
            lookahead.k,
            lookahead.alpha,
        ):
            rank_zero_warn(
                f"The trainer's Lookahead(k={callback.k}, alpha={callback.alpha}) is replaced by "
                f"the module's `ranger` config: Lookahead(k={lookahead.k}, "
                f"alpha={lookahead.alpha}) wins. Set k and alpha in the `ranger` config instead."
            )


_Hparams = TypeVar("_Hparams", bound=MutableMapping)


def _plain_configs(hparams: _Hparams) -> _Hparams:
    """``hparams`` with every ``RangerConfig`` value replaced by its plain data, in place."""
    for key, value in list(hparams.items()):
        if isinstance(value, RangerConfig):
            hparams[key] = value.as_dict()
    return hparams


def _no_decay_parameters(module: nn.Module) -> set[nn.Parameter]:
    """Biases, other 1-D (and 0-D) parameters, and every parameter of a normalization layer."""
    found = {p for p in module.parameters() if p.ndim <= 1}
    for layer in module.modules():
        if isinstance(layer, NORMALIZATION_LAYERS):
            found.update(layer.parameters(recurse=False))
    return found


def _param_groups(config: RangerConfig, module: nn.Module) -> list[dict[str, Any]]:
    params = list(module.parameters())
    if not (config.no_decay_norm_and_bias and config.weight_decay > 0):
        return [{"params": params}]
    exempt = _no_decay_parameters(module)
    groups: list[dict[str, Any]] = [
        {"params": [p for p in params if p not in exempt], "name": "decay"},
        {"params": [p for p in params if p in exempt], "name": "no_decay", "weight_decay": 0.0},
    ]
    return [g for g in groups if g["params"]]


def _build_optimizer(config: RangerConfig, module: nn.Module) -> torch.optim.Optimizer:
    groups = _param_groups(config, module)
    common: dict[str, Any] = {
        "lr": config.lr,
        "betas": config.betas,
        "eps": config.eps,
        "weight_decay": config.weight_decay,
    }
    if config.optimizer == "adam":
        return torch.optim.Adam(groups, **common)
    if config.optimizer == "adamw":
        return torch.optim.AdamW(groups, **common)
    return RAdam(
        groups,
        **common,
        decoupled_weight_decay=config.decoupled_weight_decay,
        rectify_threshold=config.rectify_threshold,
    )
