"""The test kit shared by the test modules and the 2-process scripts (``tests/scripts/``).

- :mod:`helpers.data`: the small data sets, gradient sequences and batches.
- :mod:`helpers.models`: the LightningModules and plain modules the tests train.
- :mod:`helpers.trainers`: quiet Trainers and the Lookahead checkpoint runs.
- :mod:`helpers.asserts`: comparisons of named tensors and of resumed states.
- :mod:`helpers.references`: independent references (Algorithm 2 of RAdam in float64, Algorithm 1
  of Lookahead and Gradient Centralization as plain PyTorch loops).
- :mod:`helpers.launch`: running a script of ``tests/scripts/`` in 2 CPU processes.
- :mod:`helpers.sharded`: FSDP1 on the CPU and full weights under any strategy.
- :mod:`helpers.monitor`: the RectificationMonitor's regressor, logger readers and hand-computed
  statistics.
- :mod:`helpers.pl`: the same pieces under the ``pytorch_lightning`` namespace.
"""
