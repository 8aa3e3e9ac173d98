"""``python -m lightning_ranger`` / ``lightning-ranger``: a LightningCLI whose default model and
data are the digits demos; any LightningModule or LightningDataModule is selectable by class path.

Example::

    python -m lightning_ranger fit --config callbacks/ranger.yaml --trainer.max_epochs=5
    python -m lightning_ranger fit --model=my_project.Net --data=my_project.Data
"""

from __future__ import annotations

from lightning.pytorch import LightningDataModule, LightningModule
from lightning.pytorch.cli import ArgsType, LightningArgumentParser, LightningCLI

__all__ = ["RangerCLI", "main"]


class RangerCLI(LightningCLI):
    """LightningCLI in subclass mode with :mod:`lightning_ranger.demos` as the defaults."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.set_defaults(
            {
                "model": {"class_path": "lightning_ranger.demos.DigitsClassifier"},
                "data": {"class_path": "lightning_ranger.demos.DigitsDataModule"},
            }
        )


def main(args: ArgsType = None) -> None:
    """Run the CLI on ``args`` (``sys.argv`` when ``None``)."""
    RangerCLI(
        LightningModule,
        LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        args=args,
        save_config_kwargs={"overwrite": True},
    )
