"""Scripts that the multi-process tests run in 2 CPU processes (:mod:`helpers.launch`)."""
