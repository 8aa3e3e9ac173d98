"""The example scripts run end to end in their quick form and write what they promise.

Each script runs in a subprocess, as a user runs it; the checks read its outputs back: the printed
tables (every row, numbers in range), the PNGs (they open, at the size the script draws), the
TensorBoard events (the rectification tags and histograms), and the results files.
"""

from __future__ import annotations

import copy
import doctest
import json
import math
import pickle
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import torch
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
sys.path.insert(0, str(EXAMPLES))

from _study import frozen_start_adam, recipes  # noqa: E402
from _study.frozen_start_adam import FrozenStartAdam  # noqa: E402
from _study.recipes import RECIPES  # noqa: E402

CELL = re.compile(r"^\**(?P<mean>-?\d+\.\d+) ± (?P<std>\d+\.\d+)\**$")
DPI = 80


def _run(script: str, *args: str | Path, timeout: float = 240) -> str:
    """Run an example; its stdout, or a failure that shows both streams."""
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / script), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout


def _table(text: str, labels: list[str], columns: int) -> dict[str, list[tuple[float, float]]]:
    """The ``mean ± std`` cells of the Markdown table rows named ``labels`` (first table)."""
    rows = {}
    for label in labels:
        match = re.search(rf"^\| {re.escape(label)} \| (.+) \|$", text, re.MULTILINE)
        assert match, f"no table row for {label!r} in:\n{text}"
        cells = [CELL.match(cell.strip()) for cell in match.group(1).split(" | ")]
        assert len(cells) == columns and all(cells), match.group(0)
        rows[label] = [(float(c["mean"]), float(c["std"])) for c in cells if c]
    return rows


def _png(path: Path, inches: tuple[float, float]) -> None:
    """The PNG opens, has the drawn size, is not blank, and is small enough for the docs."""
    with Image.open(path) as image:
        assert image.format == "PNG"
        assert image.size == (round(inches[0] * DPI), round(inches[1] * DPI))
        pixels = np.asarray(image.convert("L"))
    assert pixels.std() > 10  # lines and text, not an empty canvas
    assert path.stat().st_size < 150_000


@pytest.fixture(scope="module")
def digits(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """``make demo``'s script in its quick form, with two worker processes."""
    out = tmp_path_factory.mktemp("digits")
    stdout = _run("digits.py", "--quick", "--workers", "2", "--out", out)
    return out, stdout


def test_digits_quick_prints_the_table_and_every_verdict(digits: tuple[Path, str]) -> None:
    out, stdout = digits
    rows = _table(stdout, list(RECIPES.values()), columns=2)  # --quick: lrs 1e-3 and 3e-2
    for cells in rows.values():
        assert all(0.0 <= mean <= 100.0 and std == 0.0 for mean, std in cells)  # one seed
    assert max(mean for cells in rows.values() for mean, _ in cells) > 30.0  # learns (chance 10)
    for claim in ("Claim 1a", "Claim 1b", "Claim 2a", "Claim 2b", "Claim 3", "Ablations"):
        assert re.search(rf"^- {claim}\b.* -> \w", stdout, re.MULTILINE), claim
    assert re.search(r"^- Lookahead\b.* -> \w", stdout, re.MULTILINE)
    assert re.search(r"^Wall time: \d+ s \(14 runs, 2 worker", stdout, re.MULTILINE)
    assert (out / "summary.md").read_text().strip() in stdout


def test_digits_quick_writes_the_figures(digits: tuple[Path, str]) -> None:
    out, _ = digits
    runs = json.loads((out / "results.json").read_text())["runs"]
    scans = sum(len(run["line_scans"]) for run in runs)
    assert scans == 3  # 23 steps: syncs 1, 2 and 3 of Lookahead(k=6)
    for name, inches in {
        "accuracy_vs_lr.png": (12, 7),
        "rectification_vs_warmup.png": (11, 4),
        "adaptive_lr_variance.png": (15, 4.2),
        "training_curves.png": (11, 4),
        "lookahead_line.png": (3.6 * scans, 3.6),
    }.items():
        _png(out / name, inches)


def test_digits_quick_logs_rectification_to_tensorboard(digits: tuple[Path, str]) -> None:
    out, stdout = digits
    assert stdout.strip().splitlines()[-1].endswith(f"tensorboard --logdir {out / 'rectification'}")
    # --quick's detail lr (the middle of its grid) is 3e-2: seed 0 of the adaptive runs there
    # is monitored at every step.
    # The monitored runs have a folder of their own, which the demo's last line names.
    assert not (out / "tensorboard" / "radam" / "lr=0.03-seed=0").exists()
    events = EventAccumulator(
        str(out / "rectification" / "radam" / "lr=0.03-seed=0"), {"scalars": 0}
    )
    events.Reload()
    tags = events.Tags()
    for metric in ("rho_t", "r_t", "adaptive_lr_mean", "adaptive_lr_var"):
        assert f"rectification/{metric}" in tags["scalars"], metric
    assert "rectification/adaptive_lr" in tags["histograms"]
    rho = [e.value for e in events.Scalars("rectification/rho_t")]
    r_t = [e.value for e in events.Scalars("rectification/r_t")]
    assert len(rho) == 23 and rho == sorted(rho)  # every optimizer step, growing
    assert r_t[:5] == [0.0] * 5 and all(0.0 < r < 1.0 for r in r_t[5:])  # threshold 5
    plain = EventAccumulator(str(out / "tensorboard" / "sgd" / "lr=0.001-seed=0"))
    plain.Reload()
    assert {"train_loss", "val_acc"} <= set(plain.Tags()["scalars"])
    assert not any(tag.startswith("rectification/") for tag in plain.Tags()["scalars"])


def test_digits_runs_depend_on_the_seed_only(digits: tuple[Path, str], tmp_path: Path) -> None:
    """Same runs, one worker instead of two, and the monitor and the Lookahead scans moved to the
    other lr: every number of every run is the same."""
    out, _ = digits
    _run(
        "digits.py", "--optimizers", "adam", "ranger", "--lrs", "1e-3", "3e-2", "--detail-lr",
        "1e-3", "--seeds", "1", "--epochs", "1", "--workers", "1", "--out", tmp_path,
    )  # fmt: skip

    def by_run(folder: Path) -> dict[str, dict]:
        runs = json.loads((folder / "results.json").read_text())["runs"]
        return {f"{r['run']['recipe']}/{r['run']['lr']}/{r['run']['seed']}": r for r in runs}

    alone, parallel = by_run(tmp_path), by_run(out)
    assert len(alone) == 4
    assert alone["ranger/0.001/0"]["line_scans"] and parallel["ranger/0.03/0"]["line_scans"]
    for key, run in alone.items():
        for field in ("test_acc", "train_loss", "val_loss", "val_acc"):
            assert run[field] == parallel[key][field], (key, field)


def test_frozen_start_adam_only_updates_v_and_then_is_adam() -> None:
    torch.manual_seed(0)
    start = torch.randn(5)
    grads = [torch.randn(5) for _ in range(6)]
    p = torch.nn.Parameter(start.clone())
    optimizer = FrozenStartAdam([p], lr=0.1, betas=(0.9, 0.98), freeze_steps=3)
    v = torch.zeros(5)
    for g in grads[:3]:
        p.grad = g.clone()
        optimizer.step()
        v = 0.98 * v + 0.02 * g * g
        assert torch.equal(p.detach(), start)
        assert torch.equal(optimizer.state[p]["exp_avg"], torch.zeros(5))
    torch.testing.assert_close(optimizer.state[p]["exp_avg_sq"], v)
    reference = torch.nn.Parameter(start.clone())
    adam = torch.optim.Adam([reference], lr=0.1, betas=(0.9, 0.98))
    adam.load_state_dict(copy.deepcopy(optimizer.state_dict()))  # Adam's: step 3, m = 0, v
    for g in grads[3:]:
        p.grad, reference.grad = g.clone(), g.clone()
        optimizer.step()
        adam.step()
    assert not torch.equal(p.detach(), start)
    torch.testing.assert_close(p.detach(), reference.detach(), rtol=0, atol=0)
    with pytest.raises(ValueError, match="`freeze_steps` must be an int >= 0, got -1"):
        FrozenStartAdam([p], freeze_steps=-1)


@pytest.mark.parametrize("module", [frozen_start_adam, recipes], ids=lambda m: m.__name__)
def test_study_docstring_examples(module: ModuleType) -> None:
    assert doctest.testmod(module).failed == 0  # examples/ is outside pytest's doctest paths


def test_char_transformer_quick(tmp_path: Path) -> None:
    stdout = _run("char_transformer.py", "--quick", "--out", tmp_path)
    labels = ["Adam", "Adam + warmup", "RAdam", "Ranger"]
    loss_table, bits_table = stdout.split("Bits per character")
    losses = _table(loss_table, labels, columns=2)  # the default lrs, 3e-3 and 3e-2
    bits = _table(bits_table, labels, columns=2)
    for label in labels:
        for (loss, _), (bit, _) in zip(losses[label], bits[label], strict=True):
            assert 0.0 < loss < math.log(256) + 1.0  # nats per byte; uniform is ln 256 = 5.5
            assert bit == pytest.approx(loss / math.log(2), abs=2e-3)
    results = json.loads((tmp_path / "results.json").read_text())
    assert len(results) == 8  # 4 optimizers x 2 lrs
    assert all(r["steps"] == [10, 20, 30] for r in results)  # 30 steps, validated every 10
    assert all(
        len(r["val_loss"]) == 3 and r["final_val_loss"] == r["val_loss"][-1] for r in results
    )
    _png(tmp_path / "loss_curves.png", (7, 4.5))


def _fake_cifar(root: Path, per_file: int = 8) -> None:
    """A CIFAR-10 folder in the real format (pickled dicts of uint8 rows), with noise images."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {
            b"batch_label": name.encode(),
            b"labels": rng.integers(0, 10, per_file).tolist(),
            b"data": rng.integers(0, 256, (per_file, 3072), dtype=np.uint8),
            b"filenames": [f"{name}_{i}.png".encode() for i in range(per_file)],
        }
        with open(folder / name, "wb") as f:
            pickle.dump(batch, f)


def test_cifar10_resnet_on_a_fake_cifar_folder(tmp_path: Path) -> None:
    _fake_cifar(tmp_path / "data")
    # A ResNet-18 step takes seconds on a small CPU: Ranger (RangerMixin's recipes, Lookahead and
    # the slow-weight evaluation) and SGD (the study's own optimizers) cover both code paths.
    stdout = _run("cifar10_resnet.py", "--data-dir", tmp_path / "data", "--quick", "--optimizers",
                  "ranger", "sgd", "--out", tmp_path / "out")  # fmt: skip
    assert "1 steps of batch 4, 40 training images" in stdout
    rows = _table(stdout, ["Ranger", "SGD + momentum"], columns=1)
    assert all(0.0 <= cells[0][0] <= 100.0 for cells in rows.values())
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert [r["run"]["recipe"] for r in results] == ["ranger", "sgd"]
    assert all(r["run"]["lr"] == 0.03 for r in results)
    _png(tmp_path / "out" / "accuracy_vs_lr.png", (12, 7))


def test_cifar10_resnet_says_where_the_data_goes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import cifar10_resnet  # in this process: the check runs before any training

    with pytest.raises(SystemExit) as exit_info:
        cifar10_resnet.parse_args(["--data-dir", str(tmp_path)])
    assert exit_info.value.code == 2
    message = capsys.readouterr().err
    assert f"{tmp_path / 'cifar-10-batches-py'} lacks data_batch_1" in message
    assert "cifar-10-python.tar.gz" in message and "download=True" in message


def test_fabric_ranger_resumes_bit_for_bit_and_logs_to_tensorboard(tmp_path: Path) -> None:
    uninterrupted = _run("fabric_ranger.py", "--epochs", "3", "--out", tmp_path / "a")
    _run("fabric_ranger.py", "--epochs", "2", "--out", tmp_path / "b")
    resumed = _run("fabric_ranger.py", "--epochs", "3", "--out", tmp_path / "b", "--resume")
    final = [line for line in uninterrupted.splitlines() if line.startswith("final")]
    assert final == [line for line in resumed.splitlines() if line.startswith("final")]
    assert "after 72 steps" in final[0]
    (events,) = (tmp_path / "a").glob("events.out.tfevents.*")
    scalars = EventAccumulator(str(events)).Reload().Tags()["scalars"]
    logged = {"val/acc", "rectification/r_t", "rectification/adaptive_lr_var_ratio"}
    assert logged | {"lookahead/restores"} <= set(scalars)
