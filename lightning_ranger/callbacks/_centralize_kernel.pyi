from collections.abc import Sequence
from typing import Any

def centralize_rows(matrices: Sequence[Any], threads: int, /) -> None: ...
