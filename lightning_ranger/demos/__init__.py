"""Small, download-free data and models for examples and tests, like ``lightning.pytorch.demos``."""

from lightning_ranger.demos.digits import DigitsClassifier, DigitsDataModule

__all__ = ["DigitsClassifier", "DigitsDataModule"]
