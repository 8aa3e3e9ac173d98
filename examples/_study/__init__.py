"""Helpers shared by the example scripts (not part of the installed package), one job each.

- ``recipes``: the optimizers a study compares and how a ``RangerMixin`` module builds them;
  ``frozen_start_adam``: the paper's Adam-2k ablation.
- ``runner``: runs in parallel worker processes, one thread each, with one progress bar.
- ``history``: a run's learning curves; ``summary``: tables of mean and spread over seeds;
  ``events``: reading TensorBoard event files back.
- The digits study's own: ``digits_runs`` (one run), ``lookahead_line`` (the slow-to-fast line
  scans), ``sampling_variance`` (claim 1 over minibatch draws), ``claims`` (the verdicts) and
  ``figures`` (the PNGs).
"""
