"""Run a study's training runs in worker processes, with one progress bar over the runs."""

from __future__ import annotations

import logging
import multiprocessing
import warnings
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from functools import partial
from multiprocessing.context import BaseContext
from typing import TypeVar

import torch
from tqdm import tqdm

Spec = TypeVar("Spec")
Result = TypeVar("Result")


def quiet_worker(threads: int | None = 1) -> None:
    """``threads`` intra-op threads (``None``: torch's default), and no Lightning banners or
    known-harmless warnings.

    With a fixed thread count every run executes the same way whether it runs in a worker or in
    the main process, so a run's result does not depend on the number of workers.
    """
    if threads is not None:
        torch.set_num_threads(threads)
    for name in ("lightning.pytorch", "lightning.fabric", "lightning_ranger"):
        logging.getLogger(name).setLevel(logging.WARNING)
    for message in (
        ".*does not have many workers.*",  # the bundled data fits in memory; workers cost more
        ".*smaller than the logging interval.*",  # short --quick runs
        ".*LeafSpec.*",  # Lightning 2.6 on torch 2.14's pytree, harmless
    ):
        warnings.filterwarnings("ignore", message=message)


def run_all(
    train: Callable[[Spec], Result],
    specs: Sequence[Spec],
    workers: int,
    describe: Callable[[Spec], str] = str,
    threads: int | None = 1,
) -> list[Result]:
    """``[train(spec) for spec in specs]``, spread over ``workers`` processes.

    Args:
        train: a module-level function (the workers import it by name).
        specs: one picklable description per run; each run seeds itself.
        workers: processes; ``1`` runs everything in this process.
        describe: short text of a spec for the progress bar.
        threads: intra-op threads per run (``None``: torch's default, for one run at a time on
            a GPU machine).

    Returns:
        The results in the order of ``specs``.

    """
    # Here too: what this process computes afterwards runs with the same thread count.
    quiet_worker(threads)
    results: list[Result | None] = [None] * len(specs)
    if workers <= 1:
        with _progress(len(specs)) as bar:
            for i, spec in enumerate(specs):
                results[i] = train(spec)
                bar.set_postfix_str(describe(spec))
                bar.update()
        return [r for r in results if r is not None]
    initializer = partial(quiet_worker, threads)
    with ProcessPoolExecutor(workers, mp_context=_context(), initializer=initializer) as pool:
        # Submitting starts the workers, before the progress bar starts its monitor thread.
        futures = {pool.submit(train, spec): i for i, spec in enumerate(specs)}
        with _progress(len(specs)) as bar:
            for future in as_completed(futures):
                i = futures[future]
                results[i] = future.result()
                bar.set_postfix_str(describe(specs[i]))
                bar.update()
    return [r for r in results if r is not None]


def _progress(total: int) -> tqdm:
    return tqdm(total=total, desc="runs", unit="run", dynamic_ncols=True)


def _context() -> BaseContext:
    """``fork`` where there is one: the workers start at once, with this process's imports (it
    has run no parallel torch work, and each worker sets its own threads). ``spawn`` elsewhere."""
    methods = multiprocessing.get_all_start_methods()
    return multiprocessing.get_context("fork" if "fork" in methods else "spawn")
