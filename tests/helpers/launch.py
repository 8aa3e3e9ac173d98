"""Run a script of ``tests/scripts/`` in 2 CPU processes under ``torch.distributed.run``, for the
multi-process tests.

``torch.distributed.run`` rather than Lightning's launcher: Lightning re-runs the calling script
for ``strategy="ddp"``, which under pytest would re-run pytest, and ``ddp_spawn`` cannot be used
for ``ModelParallelStrategy``. Under the launcher the processes exist from the start, so one
launch can fit several Trainers in the same process group. The scripts run as modules
(``scripts.NAME``) from the tests folder, so they import the kit as the tests do.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

TESTS = Path(__file__).parents[1]


def run_two_processes(script: str, *args: str, timeout: float) -> None:
    """Run ``tests/scripts/<script>.py`` with ``args`` in 2 processes (1 thread each); fail with
    the end of its output if it fails."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    result = subprocess.run(
        [*command, "--module", f"scripts.{script}", *args],
        cwd=TESTS,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert result.returncode == 0, result.stdout[-5000:] + result.stderr[-10000:]


def leave_process_group() -> None:
    """End a script run by :func:`run_two_processes`: both ranks leave the process group together,
    then exit without the interpreter's shutdown, where threads that the process group's backend
    leaves behind can abort the process ("terminate called without an active exception") after
    all the work is done."""
    import torch.distributed

    if torch.distributed.is_initialized():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
