"""`python -m lightning_ranger` with each LightningCLI config of callbacks/: fit, checkpoint,
resume, and --print_config round trips; and the CLI with a user's own package (the console script
included): its classes' defaults, explicit flags, parse-time checks, and the digits data without
scikit-learn. Each run is a real subprocess."""

from __future__ import annotations

import os
import re
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


# A user's own package, outside lightning_ranger: a RangerMixin module annotated as the docs say,
# one annotated `RangerConfig | dict | None`, a module with its own dataloaders, a data module.
USER_PACKAGE = """
import lightning as L
import torch
from torch.utils.data import DataLoader, TensorDataset

from lightning_ranger import RangerConfig, RangerMixin

OWN = RangerConfig(optimizer="ranger", lr=5e-3, k=4)


def _loader(batch_size):
    x = torch.randn(32, 4, generator=torch.Generator().manual_seed(0))
    return DataLoader(TensorDataset(x, x[:, :1]), batch_size=batch_size)


class MyNet(RangerMixin, L.LightningModule):
    def __init__(self, ranger: RangerConfig | None = OWN, width: int = 8):
        super().__init__()
        self.save_hyperparameters()
        self.body = torch.nn.Sequential(torch.nn.Linear(4, width), torch.nn.Linear(width, 1))

    def training_step(self, batch, batch_idx):
        x, y = batch
        return torch.nn.functional.mse_loss(self.body(x), y)


class DictNet(MyNet):
    def __init__(self, ranger: RangerConfig | dict | None = OWN):
        super().__init__(ranger)


class LoaderNet(MyNet):
    def train_dataloader(self):
        return _loader(4)


class MyData(L.LightningDataModule):
    def __init__(self, batch_size: int = 8):
        super().__init__()
        self.save_hyperparameters()

    def train_dataloader(self):
        return _loader(self.hparams.batch_size)
"""
OWN = {
    "optimizer": "ranger",
    "lr": 5e-3,
    "betas": [0.9, 0.999],
    "eps": 1e-8,
    "weight_decay": 0.0,
    "decoupled_weight_decay": False,
    "rectify_threshold": 5.0,
    "k": 4,
    "alpha": 0.5,
    "no_decay_norm_and_bias": True,
    "schedule": "constant",
    "warmup_steps": 0,
    "flat_fraction": 0.72,
    "slow_weight_eval": True,
    "monitor": True,
    "gradient_centralization": False,
}
CONSOLE_SCRIPT = Path(sys.executable).with_name("lightning-ranger")
BLOCK_SCIKIT_LEARN = (
    "import sys; sys.modules['sklearn'] = None; from lightning_ranger.cli import main; main()"
)


def _user_cli(
    tmp_path: Path, *args: str, script: bool = False, code: str | None = None
) -> subprocess.CompletedProcess:
    """Run the CLI (the console script, ``python -m lightning_ranger`` or ``python -c code``)
    with the user's package ``mypkg`` on ``PYTHONPATH``."""
    package = tmp_path / "src" / "mypkg"
    package.mkdir(parents=True, exist_ok=True)
    (package / "__init__.py").write_text(USER_PACKAGE)
    if script:
        command = [str(CONSOLE_SCRIPT)]
    elif code is not None:
        command = [sys.executable, "-c", code]
    else:
        command = [sys.executable, "-m", "lightning_ranger"]
    return subprocess.run(
        [*command, *args],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(tmp_path / "src")},
        capture_output=True,
        text=True,
        timeout=300,
    )


def _printed(tmp_path: Path, *args: str, script: bool = False) -> dict:
    result = _user_cli(tmp_path, "fit", *args, "--print_config", script=script)
    assert result.returncode == 0, result.stderr[-3000:]
    return yaml.safe_load(result.stdout)


def test_user_classes_keep_their_own_defaults(tmp_path):
    config = _printed(tmp_path, "--model=mypkg.MyNet", "--data=mypkg.MyData", script=True)
    assert config["model"] == {
        "class_path": "mypkg.MyNet",
        "init_args": {"ranger": OWN, "width": 8},
    }
    assert config["data"] == {"class_path": "mypkg.MyData", "init_args": {"batch_size": 8}}


def test_a_user_model_without_data_keeps_its_own_dataloaders(tmp_path):
    config = _printed(tmp_path, "--model=mypkg.LoaderNet")
    assert config["data"] is None
    assert config["model"]["init_args"]["ranger"] == OWN
    # The demo model with the user's data: only the data is the user's.
    config = _printed(tmp_path, "--data=mypkg.MyData")
    assert config["model"]["class_path"] == "lightning_ranger.demos.DigitsClassifier"
    assert config["data"]["init_args"] == {"batch_size": 8}


def test_explicit_flags_are_all_honoured(tmp_path):
    flags = {"monitor": False, "lr": 0.02, "schedule": "cosine", "weight_decay": 0.1, "k": 3}
    config = _printed(
        tmp_path,
        "--model=mypkg.DictNet",
        "--data=mypkg.MyData",
        *(f"--model.ranger.{name}={str(value).lower()}" for name, value in flags.items()),
        "--data.batch_size=4",
    )
    assert config["model"]["init_args"]["ranger"] == {**OWN, **flags}
    assert config["data"]["init_args"] == {"batch_size": 4}


def test_a_config_file_chooses_the_class_and_ranger_yaml_keeps_its_ranger_block(tmp_path):
    (tmp_path / "mine.yaml").write_text(
        "model:\n  class_path: mypkg.MyNet\n  init_args:\n    width: 3\n"
    )
    config = _printed(tmp_path, "--config=mine.yaml")
    assert config["model"]["init_args"] == {"ranger": OWN, "width": 3}
    assert config["data"] is None

    config = _printed(
        tmp_path, f"--config={ROOT / 'callbacks' / 'ranger.yaml'}", "--model=mypkg.MyNet"
    )
    ranger = config["model"]["init_args"]["ranger"]
    assert (ranger["lr"], ranger["k"], ranger["schedule"]) == (0.003, 6, "flat_cosine")


def test_print_config_of_user_classes_round_trips(tmp_path):
    args = ("--model=mypkg.MyNet", "--data=mypkg.MyData", "--model.ranger.alpha=0.25")
    config = _printed(tmp_path, *args)
    (tmp_path / "printed.yaml").write_text(yaml.safe_dump(config))
    assert _printed(tmp_path, "--config=printed.yaml") == config


@pytest.mark.parametrize(
    "model", [[], ["--model=mypkg.MyNet"], ["--model=mypkg.DictNet"]], ids=["demo", "typed", "dict"]
)
def test_a_misspelt_optimizer_fails_at_parse_time_with_the_choices(tmp_path, model):
    result = _user_cli(
        tmp_path, "fit", *model, "--model.ranger.optimizer=rangr", "--trainer.max_steps=1"
    )
    assert result.returncode == 2
    error = result.stderr[result.stderr.index("error:") :]
    assert "rangr" in error
    assert re.search(r"\W'radam', 'ranger', 'adam', 'adamw'\W", error), error
    assert not (tmp_path / "lightning_logs").exists()


@pytest.mark.parametrize(
    ("model", "flag", "message"),
    [
        # A value that no RangerConfig field accepts makes the parser fall back to the dict, which
        # is checked whether the config rejects it by type or by value.
        ("mypkg.DictNet", "--model.ranger.lr=big", "`lr` must be a float > 0, got 'big'"),
        (
            "mypkg.DictNet",
            "--model.ranger.warmup_steps=1.5",
            "`warmup_steps` must be an int >= 0, got '1.5'",
        ),
        # A RangerConfig-typed argument gets its types checked by the parser and its ranges by
        # the config.
        (None, "--model.ranger.lr=-1", "`lr` must be a float > 0, got -1.0"),
        (None, "--model.ranger.k=0", "`k` must be a positive int, got 0"),
        ("mypkg.MyNet", "--model.ranger.lr=-1", "`lr` must be a float > 0, got -1.0"),
        ("mypkg.MyNet", "--model.ranger.k=0", "`k` must be a positive int, got 0"),
    ],
    ids=["dict-type", "dict-type-int", "demo-range", "demo-range-int", "typed-range", "typed-int"],
)
def test_a_bad_ranger_field_fails_at_parse_time_naming_it(tmp_path, model, flag, message):
    """Before anything is built, with the config's message."""
    chosen = [] if model is None else [f"--model={model}"]
    result = _user_cli(tmp_path, "fit", *chosen, flag, "--trainer.max_steps=1")
    assert result.returncode == 2
    assert result.stderr.strip().endswith(f"error: --model.ranger: {message}"), result.stderr
    assert not (tmp_path / "lightning_logs").exists()


def test_fit_with_user_classes_builds_their_config(tmp_path):
    result = _user_cli(
        tmp_path,
        "fit",
        "--model=mypkg.MyNet",
        "--data=mypkg.MyData",
        "--model.ranger.monitor=false",
        "--trainer.max_steps=6",
        "--trainer.enable_progress_bar=false",
        script=True,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    (path,) = _checkpoints(tmp_path)
    checkpoint = torch.load(path, weights_only=True)
    assert checkpoint["hyper_parameters"]["ranger"] == {**OWN, "monitor": False}
    assert checkpoint["datamodule_hyper_parameters"]["batch_size"] == 8
    assert checkpoint["callbacks"]["Lookahead"]["synced_at_step"] == 4  # k=4
    assert not any(key.startswith("RectificationMonitor") for key in checkpoint["callbacks"])


def test_the_digits_data_without_scikit_learn_exits_with_one_line(tmp_path):
    result = _user_cli(tmp_path, "fit", "--trainer.max_steps=1", code=BLOCK_SCIKIT_LEARN)
    assert result.returncode == 1
    assert result.stderr.strip() == (
        'DigitsDataModule needs scikit-learn: pip install "lightning-ranger[examples]"'
    )
    # --print_config needs no data; a user's data needs no extra.
    printed = _user_cli(tmp_path, "fit", "--print_config", code=BLOCK_SCIKIT_LEARN)
    assert printed.returncode == 0, printed.stderr[-3000:]
    fit = _user_cli(
        tmp_path, "fit", "--model=mypkg.LoaderNet", "--trainer.max_steps=2", code=BLOCK_SCIKIT_LEARN
    )
    assert fit.returncode == 0, fit.stderr[-3000:]
