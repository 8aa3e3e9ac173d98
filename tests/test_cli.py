"""`python -m lightning_ranger` with each LightningCLI config of callbacks/: fit, checkpoint,
resume, and --print_config round trips. Each run is a real subprocess."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted((ROOT / "callbacks").glob("*.yaml"))
FAST = [
    "--trainer.limit_val_batches=1",
    "--trainer.log_every_n_steps=10",
    "--trainer.enable_progress_bar=false",
]


def _cli(cwd: Path, *args: str) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "lightning_ranger", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout


def _checkpoints(cwd: Path) -> list[Path]:
    return sorted(cwd.glob("lightning_logs/**/checkpoints/*.ckpt"), key=lambda p: p.stat().st_mtime)


def test_the_four_configs_exist():
    assert [c.name for c in CONFIGS] == [
        "lookahead.yaml",
        "ranger.yaml",
        "rectification_monitor.yaml",
        "slow_weight_swap.yaml",
    ]
    for config in CONFIGS:
        assert config.read_text().startswith("# "), (
            f"{config.name} must start with its documentation"
        )


WITH_LOOKAHEAD = {"lookahead.yaml", "slow_weight_swap.yaml", "ranger.yaml"}
WITH_MONITOR = {"rectification_monitor.yaml", "ranger.yaml"}


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: c.stem)
def test_fit_writes_a_checkpoint_that_resumes(tmp_path, config):
    _cli(tmp_path, "fit", f"--config={config}", "--trainer.max_steps=25", *FAST)
    (first,) = _checkpoints(tmp_path)
    saved = torch.load(first, weights_only=True)
    assert saved["global_step"] == 25
    has_lookahead = any(key.startswith("Lookahead") for key in saved["callbacks"])
    assert has_lookahead == (config.name in WITH_LOOKAHEAD)
    if config.name in WITH_MONITOR:
        (events,) = first.parents[1].glob("events.out.tfevents.*")
        accumulator = EventAccumulator(str(events)).Reload()
        assert [e.step for e in accumulator.Scalars("rectification/r_t")] == [10, 20]

    _cli(
        tmp_path,
        "fit",
        f"--config={config}",
        "--trainer.max_steps=30",
        f"--ckpt_path={first}",
        *FAST,
    )
    resumed = [c for c in _checkpoints(tmp_path) if c != first]
    assert torch.load(resumed[-1], weights_only=True)["global_step"] == 30


def test_print_config_round_trips(tmp_path):
    printed = _cli(
        tmp_path, "fit", f"--config={ROOT / 'callbacks' / 'ranger.yaml'}", "--print_config"
    )
    config = yaml.safe_load(printed)
    assert config["model"]["class_path"] == "lightning_ranger.demos.DigitsClassifier"
    assert config["model"]["init_args"]["ranger"]["optimizer"] == "ranger"
    assert config["model"]["init_args"]["ranger"]["schedule"] == "flat_cosine"
    saved = tmp_path / "printed.yaml"
    saved.write_text(printed)
    assert yaml.safe_load(_cli(tmp_path, "fit", f"--config={saved}", "--print_config")) == config


def test_defaults_are_the_digits_demos(tmp_path):
    config = yaml.safe_load(_cli(tmp_path, "fit", "--print_config"))
    assert config["data"]["class_path"] == "lightning_ranger.demos.DigitsDataModule"
    assert config["model"]["init_args"]["ranger"]["optimizer"] == "radam"
