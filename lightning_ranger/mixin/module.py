"""RangerMixin: a LightningModule's optimizer, schedule and callbacks from its ``ranger``
hyperparameter."""

from __future__ import annotations

from collections.abc import MutableMapping
from typing import Any, TypeVar

from lightning.pytorch import Callback, LightningModule
from lightning.pytorch.utilities import AttributeDict, rank_zero_warn

from lightning_ranger._namespaces import lightning_isinstance
from lightning_ranger.callbacks.lookahead import Lookahead
from lightning_ranger.mixin.config import RangerConfig
from lightning_ranger.mixin.factory import (
    build_callbacks,
    build_lr_scheduler,
    build_optimizer,
    lr_is_constant,
)

__all__ = ["RangerMixin"]


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
        return _configs_as_plain_data(super().hparams)  # type: ignore[misc]

    @property
    def hparams_initial(self) -> AttributeDict:
        """LightningModule's ``hparams_initial`` (what loggers record), with each
        ``RangerConfig`` as a dict of its fields."""
        return _configs_as_plain_data(super().hparams_initial)  # type: ignore[misc]

    def ranger_config(self) -> RangerConfig:
        """The config, from ``self.hparams["ranger"]``; override to supply it another way.

        Raises:
            TypeError: if the hyperparameter is neither a ``RangerConfig`` nor a dict of its
                fields, or a field has the wrong type.
            ValueError: for an unknown field, or a field outside its accepted values.

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
        optimizer = build_optimizer(config, module)
        if lr_is_constant(config):
            return optimizer
        # The horizon is read only here: a constant lr needs no Trainer attached.
        scheduler = build_lr_scheduler(config, optimizer, module.trainer.estimated_stepping_batches)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step", "frequency": 1},
        }

    def configure_callbacks(self) -> list[Callback]:
        """Lookahead and SlowWeightSwap for Ranger, the RectificationMonitor and
        GradientCentralization, as the config says."""
        callbacks = build_callbacks(self.ranger_config())
        for callback in callbacks:
            if isinstance(callback, Lookahead):
                _warn_if_trainer_lookahead_is_replaced(self._lightning_module, callback)
        return callbacks


def _warn_if_trainer_lookahead_is_replaced(module: LightningModule, lookahead: Lookahead) -> None:
    """Lightning silently lets a module's callbacks replace the trainer's of the same type; a
    user who configured the trainer's Lookahead should learn that it no longer applies."""
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


def _configs_as_plain_data(hparams: _Hparams) -> _Hparams:
    """``hparams`` with every ``RangerConfig`` value replaced by its plain data, in place."""
    for key, value in list(hparams.items()):
        if isinstance(value, RangerConfig):
            hparams[key] = value.as_dict()
    return hparams
