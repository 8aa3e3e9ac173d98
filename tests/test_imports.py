"""What importing the package pulls in: the plain-PyTorch core without Lightning, the top-level
names on first use, and none of the ``examples`` extra. Each import runs in a fresh interpreter."""

from __future__ import annotations

import subprocess
import sys

import pytest

import lightning_ranger


def _run(code: str) -> str:
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout.strip()


LIGHTNING = "sorted(m for m in ('lightning', 'pytorch_lightning') if m in sys.modules)"


@pytest.mark.parametrize(
    "statement",
    [
        "import lightning_ranger.optim",
        "from lightning_ranger import RAdam, Ranger, rectification, rho_inf",
        # every module of the core, the private ones included, and the shared checks beside it
        "import importlib, pkgutil, lightning_ranger.optim as core, lightning_ranger._validation\n"
        "for m in pkgutil.iter_modules(core.__path__):\n"
        "    importlib.import_module(f'lightning_ranger.optim.{m.name}')",
    ],
    ids=["core", "top-level", "every-core-module"],
)
def test_the_optimizer_imports_without_lightning(statement):
    assert _run(f"import sys\n{statement}\nprint({LIGHTNING})") == "[]"


def test_the_mixin_imports_lightning_on_first_use():
    code = (
        "import sys\n"
        "from lightning_ranger import RangerMixin\n"
        "from lightning.pytorch import LightningModule\n"
        "print(issubclass(type('Net', (RangerMixin, LightningModule), {}), LightningModule))\n"
        "print('lightning' in sys.modules)\n"
    )
    assert _run(code).split() == ["True", "True"]


def test_every_public_name_resolves_to_its_home():
    from lightning_ranger.mixin import RangerConfig, RangerMixin
    from lightning_ranger.optim import RAdam, Ranger, rectification, rho_inf

    homes = {
        "RAdam": RAdam,
        "Ranger": Ranger,
        "RangerConfig": RangerConfig,
        "RangerMixin": RangerMixin,
        "rectification": rectification,
        "rho_inf": rho_inf,
    }
    assert sorted(lightning_ranger.__all__) == sorted(homes)
    for name, value in homes.items():
        assert getattr(lightning_ranger, name) is value, name
    assert set(lightning_ranger.__all__) <= set(dir(lightning_ranger))
    assert lightning_ranger.__version__ == "0.2.0"


def test_an_unknown_name_raises_attribute_error():
    with pytest.raises(
        AttributeError, match=r"^module 'lightning_ranger' has no attribute 'Lookahead'$"
    ):
        lightning_ranger.Lookahead  # noqa: B018
    with pytest.raises(ImportError, match="cannot import name 'Lookahead' from 'lightning_ranger'"):
        from lightning_ranger import Lookahead  # noqa: F401


def test_the_package_the_callbacks_and_the_mixin_import_no_extra():
    """scikit-learn, torchvision and matplotlib (the ``examples`` extra) stay unimported by the
    package; Lightning and torchmetrics import the latter two themselves when installed."""
    code = (
        "import sys\n"
        "import lightning.pytorch, torchmetrics\n"
        "extras = ('sklearn', 'torchvision', 'matplotlib')\n"
        "before = {m for m in extras if m in sys.modules}\n"
        "import lightning_ranger, lightning_ranger.callbacks, lightning_ranger.cli\n"
        "from lightning_ranger import RangerMixin\n"
        "print(sorted({m for m in extras if m in sys.modules} - before))\n"
    )
    assert _run(code) == "[]"
