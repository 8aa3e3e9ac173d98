"""The main job of `make demo` runs end to end and learns (a short run)."""

import re
import subprocess
import sys
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def test_digits_demo_learns_in_a_short_run():
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / "digits.py"), "--epochs", "3"],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    match = re.search(r"test accuracy (\d\.\d+)", result.stdout)
    assert match, result.stdout + result.stderr
    assert float(match.group(1)) > 0.5  # chance is 0.1; 12 epochs reach about 0.96
