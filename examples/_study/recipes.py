"""The optimizers a study compares, by name, and how a ``RangerMixin`` module builds each one.

Five recipes come straight from :class:`lightning_ranger.RangerConfig`; two need an optimizer the
config does not offer, which :class:`RecipeOptimizers` builds: ``"adam-2k"``
(:class:`~_study.frozen_start_adam.FrozenStartAdam`, without weight decay) and ``"sgd"`` (SGD with
momentum 0.9 and the config's ``weight_decay`` on every parameter, where the config's optimizers
exempt biases and normalization weights).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any, cast

import torch
from lightning.pytorch import LightningModule

from _study.frozen_start_adam import FrozenStartAdam
from lightning_ranger import RangerConfig, RangerMixin

#: Recipe name -> label for tables and legends.
RECIPES: dict[str, str] = {
    "adam": "Adam",
    "adam-warmup": "Adam + warmup",
    "radam": "RAdam",
    "ranger": "Ranger",
    "adam-eps": "Adam-eps",
    "adam-2k": "Adam-2k",
    "sgd": "SGD + momentum",
}

#: The four optimizers of the main comparison; the rest are the paper's ablations and SGD.
MAIN = ("adam", "adam-warmup", "radam", "ranger")

#: ``eps`` of the Adam-eps ablation (Adam's default is 1e-8).
ADAM_EPS = 1e-4

#: Momentum of the SGD reference.
SGD_MOMENTUM = 0.9


def ranger_config(recipe: str, lr: float, beta2: float, warmup_steps: int = 0) -> RangerConfig:
    """The ``ranger`` hyperparameter of a recipe at ``lr``, with ``betas=(0.9, beta2)``.

    ``warmup_steps`` is the linear warmup of ``"adam-warmup"`` (ignored by the others). For
    ``"adam-2k"`` and ``"sgd"`` the config only carries ``lr``, ``betas`` and ``eps`` to
    :class:`RecipeOptimizers`. The mixin's own ``RectificationMonitor`` is off in every recipe: a
    study adds one with its own logging interval to the Trainer.

    Raises:
        ValueError: for an unknown recipe.

    Example::

        >>> ranger_config("adam-warmup", 1e-3, 0.99, warmup_steps=200).warmup_steps
        200

    """
    if recipe not in RECIPES:
        raise ValueError(f"unknown recipe {recipe!r}; the recipes are {sorted(RECIPES)}")
    options: dict[str, Any] = {"optimizer": "adam"}
    if recipe in ("radam", "ranger"):
        options["optimizer"] = recipe
    elif recipe == "adam-warmup":
        options["warmup_steps"] = warmup_steps
    elif recipe == "adam-eps":
        options["eps"] = ADAM_EPS
    return RangerConfig(lr=lr, betas=(0.9, beta2), monitor=False, **options)


def adaptive(recipe: str) -> bool:
    """Whether the recipe keeps Adam's ``exp_avg_sq``, which RectificationMonitor reads."""
    return recipe != "sgd"


class RecipeOptimizers:
    """Mixin, first in the bases of a ``RangerMixin`` module with the hyperparameters ``recipe``
    and ``freeze_steps``: builds Adam-2k and SGD, and leaves the other recipes to ``RangerMixin``.
    """

    def configure_optimizers(self) -> Any:
        """SGD with momentum, FrozenStartAdam, or what ``RangerMixin`` configures."""
        assert isinstance(self, RangerMixin) and isinstance(self, LightningModule)
        recipe = self.hparams["recipe"]
        config = cast(RangerMixin, self).ranger_config()  # the module's own, if it overrides it
        if recipe == "sgd":  # L2 weight decay on every parameter (no param groups)
            return torch.optim.SGD(
                self.parameters(),
                lr=config.lr,
                momentum=SGD_MOMENTUM,
                weight_decay=config.weight_decay,
            )
        if recipe == "adam-2k":
            return FrozenStartAdam(
                self.parameters(),
                lr=config.lr,
                betas=config.betas,
                eps=config.eps,
                freeze_steps=self.hparams["freeze_steps"],
            )
        return super().configure_optimizers()  # type: ignore[misc]


def study_parser(doc: str | None, recipes: Sequence[str]) -> argparse.ArgumentParser:
    """A study's command line, described by the first line of ``doc``, with ``--optimizers``
    (the recipes to compare; ``recipes`` by default)."""
    parser = argparse.ArgumentParser(
        description=(doc or "").splitlines()[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--optimizers",
        nargs="+",
        choices=list(RECIPES),
        default=list(recipes),
        metavar="NAME",
        help=f"optimizers, of {list(RECIPES)}",
    )
    return parser
