"""``python -m lightning_ranger`` / ``lightning-ranger``: a LightningCLI whose model and data are
any LightningModule and LightningDataModule, by class path, and the digits demos when none is given.

Example::

    python -m lightning_ranger fit --config callbacks/ranger.yaml --trainer.max_epochs=5
    python -m lightning_ranger fit --model=my_project.Net --data=my_project.Data
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any

from jsonargparse import Namespace
from jsonargparse._actions import _ActionPrintConfig  # parse without printing (jsonargparse < 5)
from lightning.pytorch import LightningModule
from lightning.pytorch.cli import ArgsType, LightningArgumentParser, LightningCLI
from typing_extensions import override

from lightning_ranger import demos
from lightning_ranger.demos.digits import require_scikit_learn
from lightning_ranger.mixin import RangerConfig, RangerMixin

__all__ = ["RangerCLI", "main"]

#: The classes that ``model`` and ``data`` default to when the user chooses none.
DEMOS: dict[str, type] = {"model": demos.DigitsClassifier, "data": demos.DigitsDataModule}


class RangerCLI(LightningCLI):
    """LightningCLI in subclass mode whose defaults are the :mod:`lightning_ranger.demos`, used only
    when the command line and its configs choose no class of their own.

    - Without ``--model`` (nor ``model:`` in a ``--config``), the model is
      :class:`~lightning_ranger.demos.DigitsClassifier`, and the data
      :class:`~lightning_ranger.demos.DigitsDataModule` unless ``--data`` is given.
    - With ``--model=pkg.Net``, ``Net`` keeps its own ``__init__`` defaults (none of the demo's
      carry over), and there is data only if ``--data`` is given: otherwise the model's own
      dataloaders are used. ``--data=pkg.Data`` likewise keeps ``Data``'s defaults.

    A ``ranger`` argument that the parser took as a plain dict (a module annotated
    ``RangerConfig | dict``) is checked as a :class:`~lightning_ranger.RangerConfig` at parse
    time too. The digits data needs scikit-learn, of the ``examples`` extra: without it the CLI
    exits with one line that says what to install.

    Args:
        *args: LightningCLI's arguments; the model class defaults to any LightningModule.
        **kwargs: LightningCLI's keyword arguments; both subclass modes default to ``True``.

    Raises:
        SystemExit: with one line naming the ``examples`` extra, if the digits data is chosen and
            scikit-learn is not installed; with the parser's message for arguments it refuses.

    Example::

        from lightning_ranger.cli import RangerCLI

        cli = RangerCLI(args=["--model=my_project.Net", "--trainer.max_epochs=3"], run=False)
        cli.trainer.fit(cli.model, datamodule=cli.datamodule)

    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._demo_parsers: list[LightningArgumentParser] = []
        kwargs.setdefault("subclass_mode_model", True)
        kwargs.setdefault("subclass_mode_data", True)
        super().__init__(*args, **kwargs)

    @override
    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        """Default the model and the data to the digits demos."""
        parser.set_defaults(
            {key: {"class_path": f"{demos.__name__}.{cls.__name__}"} for key, cls in DEMOS.items()}
        )
        self._demo_parsers.append(parser)

    @override
    def parse_arguments(self, parser: LightningArgumentParser, args: ArgsType) -> None:
        """Parse ``args`` with the demos as defaults only where the user chose no class."""
        chosen = _section(self._parse_given(parser, args))
        _check_ranger_dict(parser, chosen.get("model"))
        own = {key: _class_of(chosen.get(key)) not in (None, demo) for key, demo in DEMOS.items()}
        # A demo default would hand its init_args to the user's class; the digits data suits the
        # digits model only.
        cleared = {"model": None} if own["model"] else {}
        if own["model"] or own["data"]:
            cleared["data"] = None
        for demo_parser in self._demo_parsers:
            demo_parser.set_defaults(cleared)
        super().parse_arguments(parser, args)

        if _class_of(_section(self.config).get("data")) is DEMOS["data"]:
            try:
                require_scikit_learn()
            except ModuleNotFoundError as err:
                raise SystemExit(str(err)) from None

    @staticmethod
    def _parse_given(parser: LightningArgumentParser, args: ArgsType) -> Namespace:
        """What ``args`` (and the configs they name) set, without the parser's defaults, and
        without printing: ``--print_config`` prints the final parse."""
        with _ActionPrintConfig.skip_print_config():
            if isinstance(args, (dict, Namespace)):
                return parser.parse_object(args, defaults=False, _skip_validation=True)
            return parser.parse_args(args, defaults=False, _skip_validation=True)


def _section(config: Namespace) -> Namespace:
    """The subcommand's part of ``config`` (all of it without subcommands)."""
    subcommand = config.get("subcommand")
    return config[subcommand] if subcommand else config


def _class_of(value: Any) -> Any:
    """The class that a parsed ``class_path``/``init_args`` spec names; ``None`` for no spec."""
    class_path = value.get("class_path") if isinstance(value, Namespace) else None
    if class_path is None:
        return None
    module, _, name = class_path.rpartition(".")
    return getattr(importlib.import_module(module), name)


def _check_ranger_dict(parser: LightningArgumentParser, model: Any) -> None:
    """Fail the parse, naming the accepted values, if a RangerMixin model's ``ranger`` argument is a
    dict that is not a valid :class:`RangerConfig`."""
    model_class = _class_of(model)
    if not (isinstance(model_class, type) and issubclass(model_class, RangerMixin)):
        return
    ranger = model.get("init_args", Namespace()).get("ranger")
    if isinstance(ranger, Namespace):  # RangerConfig-typed: its types are checked, not its ranges
        ranger = ranger.as_dict()
    if isinstance(ranger, Mapping):
        try:
            RangerConfig.from_value(ranger)
        except (TypeError, ValueError) as err:
            parser.error(f"--model.ranger: {err}")


def main(args: ArgsType = None) -> None:
    """Run the CLI on ``args`` (``sys.argv`` when ``None``)."""
    RangerCLI(LightningModule, args=args, save_config_kwargs={"overwrite": True})
