"""The Python blocks of the Plain PyTorch and Fabric page run as written, in order, in one
namespace (those that need ``torch.distributed`` say so on their first line and are checked by
the 2-process tests instead)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

PAGE = Path(__file__).resolve().parents[1] / "docs" / "plain_pytorch.md"


def test_the_plain_pytorch_page_runs_as_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    blocks = re.findall(r"```python\n(.*?)```", PAGE.read_text(), re.DOTALL)
    local = [b for b in blocks if not b.startswith("# under torch.distributed")]
    assert len(local) == 3 and len(blocks) == 4
    monkeypatch.chdir(tmp_path)  # the checkpoint block writes last.pt
    namespace: dict = {}
    for block in local:
        exec(compile(block, str(PAGE), "exec"), namespace)
    assert (tmp_path / "last.pt").exists()
    assert namespace["optimizer"].steps == 12 and namespace["optimizer"]._copies is not None
