"""`medsynth train` on an install without torch: one line with the install hint, no traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

_NO_TORCH = """
import sys
sys.modules["torch"] = None  # what a torch-free install looks like to `import torch`
from click.testing import CliRunner
from medsynth.cli.main import cli
res = CliRunner().invoke(cli, ["train", sys.argv[1], "-o", sys.argv[2]])
sys.stdout.write(res.output)
sys.exit(res.exit_code)
"""


def test_train_without_torch_is_one_clean_line(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-c", _NO_TORCH, str(tmp_path / "ds"), str(tmp_path / "run")],
                          capture_output=True, text=True, timeout=120)
    lines = [line for line in (proc.stdout + proc.stderr).splitlines() if line.strip()]
    assert proc.returncode == 2, lines
    assert len(lines) == 1 and lines[0].startswith("Error:") and "pip install" in lines[0], lines
    assert "Traceback" not in proc.stdout + proc.stderr
    assert not (tmp_path / "run").exists()
