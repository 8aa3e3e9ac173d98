"""Smoke test of the built package, as a user without extras gets it.

1. ``python -m build`` makes an sdist and, from it, a wheel; the wheel must be ``py3-none-any``
   and ``check-wheel-contents`` must find nothing.
2. A fresh venv gets the wheel (``--no-deps``) and, instead of a second download of torch, the
   wheel's dependencies from this environment: the closure of its ``Requires-Dist`` (no extras)
   is linked into one directory that a ``.pth`` file puts on the venv's path. Nothing else of this
   environment is visible there, so the extras (scikit-learn, torchvision, matplotlib) and
   undeclared dependencies cannot be imported.
3. In that venv, from an empty directory: ``import lightning_ranger``, its callbacks and
   ``RangerMixin``; the README's quick starts as written (the ```` ```python ```` block in each
   ``quickstart-NAME`` section of README.md); the README's CLI line on the mixin quick start's
   classes (saved as ``mypkg.py``); and ``lightning-ranger fit`` on the digits demo, which needs the
   ``examples`` extra, must exit with one line that names it.

Run: ``python .ci/wheel_smoke.py`` (``make smoke``; part of ``make test``).
"""

from __future__ import annotations

import importlib.metadata as md
import os
import re
import shlex
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parent.parent
QUICKSTARTS = ("radam", "ranger", "callbacks", "mixin")
EXTRAS_MODULES = ("sklearn", "torchvision", "matplotlib")


def run(cmd: list[str], cwd: Path, env: dict[str, str] | None = None) -> str:
    """Run ``cmd``; on failure print its output and exit."""
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(
            f"FAILED ({proc.returncode}): {shlex.join(cmd)}\n{proc.stdout[-4000:]}"
            f"{proc.stderr[-4000:]}"
        )
    return proc.stdout


def build(out: Path) -> Path:
    """Build the sdist and the wheel; check the wheel; return its path."""
    run([sys.executable, "-m", "build", "--no-isolation", "--outdir", str(out), str(ROOT)], ROOT)
    (wheel,) = out.glob("*.whl")
    (sdist,) = out.glob("*.tar.gz")
    if not wheel.name.endswith("-py3-none-any.whl"):
        sys.exit(f"FAILED: the wheel is not pure Python: {wheel.name}")
    report = run([str(Path(sys.executable).parent / "check-wheel-contents"), str(wheel)], ROOT)
    print(f"built {sdist.name} and {wheel.name}; check-wheel-contents: {report.strip()}")
    return wheel


def requirements(wheel: Path) -> list[Requirement]:
    """The wheel's ``Requires-Dist`` that apply without extras."""
    with zipfile.ZipFile(wheel) as zf:
        (name,) = [n for n in zf.namelist() if n.endswith(".dist-info/METADATA")]
        metadata = zf.read(name).decode()
    reqs = [
        Requirement(line.split(":", 1)[1])
        for line in metadata.splitlines()
        if line.startswith("Requires-Dist:")
    ]
    return [r for r in reqs if _applies(r, frozenset())]


def _applies(req: Requirement, extras: frozenset[str]) -> bool:
    """Whether ``req`` holds here for a distribution installed with ``extras``."""
    return req.marker is None or any(req.marker.evaluate({"extra": e}) for e in extras | {""})


def closure(reqs: list[Requirement]) -> dict[str, md.Distribution]:
    """The installed distributions that ``reqs`` need, recursively (extras such as
    ``jsonargparse[signatures]`` included), each checked against its version specifier."""
    found: dict[str, md.Distribution] = {}
    seen: set[tuple[str, frozenset[str]]] = set()
    todo = [(r, "lightning-ranger") for r in reqs]
    while todo:
        req, parent = todo.pop()
        try:
            dist = md.distribution(req.name)
        except md.PackageNotFoundError:
            sys.exit(f"FAILED: {req} (required by {parent}) is not installed here")
        if not req.specifier.contains(dist.version, prereleases=True):
            sys.exit(f"FAILED: {req} (required by {parent}) but {dist.version} is installed")
        key, extras = canonicalize_name(req.name), frozenset(req.extras)
        found[key] = dist
        if (key, extras) in seen:
            continue
        seen.add((key, extras))
        subs = [Requirement(line) for line in dist.requires or []]
        todo += [(sub, key) for sub in subs if _applies(sub, extras)]
    return found


def link_dependencies(dists: dict[str, md.Distribution], into: Path) -> None:
    """Symlink every top-level file and folder of ``dists`` (their ``.dist-info`` included)."""
    into.mkdir()
    for dist in dists.values():
        base = Path(str(dist.locate_file("")))
        tops = {Path(f).parts[0] for f in dist.files or [] if not str(f).startswith("..")}
        for top in tops - {"__pycache__"}:
            target = into / top
            if not target.exists() and (base / top).exists():
                target.symlink_to(base / top)
    for module in EXTRAS_MODULES:
        if (into / module).exists():
            sys.exit(f"FAILED: {module} (an extra) is a dependency of the core package")


def quickstarts(readme: str) -> dict[str, str]:
    """The ```` ```python ```` block of each ``<!-- --8<-- [start:quickstart-NAME] -->`` section
    (the markers also put the blocks into the docs' home page)."""
    pattern = r"<!-- --8<-- \[start:quickstart-(\w+)\] -->\n```python\n(.*?)```\n"
    blocks = dict(re.findall(pattern, readme, re.S))
    missing = set(QUICKSTARTS) - set(blocks)
    if missing:
        sys.exit(f"FAILED: README.md lacks the quick starts {sorted(missing)}")
    return blocks


def main() -> None:
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="lr-smoke-") as tmp_name:
        tmp = Path(tmp_name)
        wheel = build(tmp / "dist")
        deps = closure(requirements(wheel))

        venv = tmp / "venv"
        run([sys.executable, "-m", "venv", "--without-pip", str(venv)], tmp)
        python = venv / "bin" / "python"
        site = Path(
            run([str(python), "-c", "import site; print(site.getsitepackages()[0])"], tmp).strip()
        )
        link_dependencies(deps, tmp / "deps")
        (site / "_lightning_ranger_deps.pth").write_text(f"{tmp / 'deps'}\n")
        run(
            [
                sys.executable,
                "-m",
                "pip",
                "--python",
                str(python),
                "install",
                "--quiet",
                "--no-deps",
                "--no-index",
                "--disable-pip-version-check",
                str(wheel),
            ],
            tmp,
        )

        work = tmp / "work"
        work.mkdir()
        env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
        env |= {"PATH": f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}", "PYTHONPATH": str(work)}
        checks = (
            "import importlib.util, lightning_ranger, lightning_ranger.callbacks\n"
            "from lightning_ranger import RangerMixin\n"
            f"assert lightning_ranger.__file__.startswith({str(site)!r})\n"
            f"assert not any(importlib.util.find_spec(m) for m in {EXTRAS_MODULES!r})\n"
            "print(lightning_ranger.__version__)\n"
        )
        version = run([str(python), "-c", checks], work, env).strip()
        print(f"installed lightning-ranger {version} with {len(deps)} dependencies, no extras")

        blocks = quickstarts((ROOT / "README.md").read_text())
        for name in QUICKSTARTS:
            (work / f"quickstart_{name}.py").write_text(blocks[name])
            run([str(python), f"quickstart_{name}.py"], work, env)
            print(f"README quick start {name!r}: ran")
        (work / "mypkg.py").write_text(blocks["mixin"])  # its training runs under __main__ only
        cli = [
            str(venv / "bin" / "lightning-ranger"),
            "fit",
            "--model=mypkg.MyNet",
            "--data=mypkg.MyData",
            "--trainer.max_steps=3",
            "--trainer.logger=false",
            "--trainer.enable_checkpointing=false",
            "--trainer.enable_progress_bar=false",
        ]
        run(cli, work, env)
        print("the CLI on the user's own classes: ran")
        proc = subprocess.run(
            [str(venv / "bin" / "lightning-ranger"), "fit"],
            cwd=work,
            env=env,
            capture_output=True,
            text=True,
        )
        lines = proc.stderr.strip().splitlines()
        if proc.returncode == 0 or len(lines) != 1 or "lightning-ranger[examples]" not in lines[0]:
            sys.exit(
                f"FAILED: `lightning-ranger fit` without the examples extra gave "
                f"{proc.returncode}:\n{proc.stderr[-2000:]}"
            )
        print(f"`lightning-ranger fit` without the extra: {lines[0]}")
    print(f"wheel smoke test passed in {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
