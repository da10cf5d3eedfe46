"""The device check (scripts/bench/gpu_check.py) in its dry run: every section's code path on tiny models on the CPU,
without the packages a stock CUDA image lacks, writing its table."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.helpers import REPO_ROOT

# What the device machine does not have and the check must not need (tyro and websockets travel as wheels).
ABSENT = ("lerobot", "wandb", "datasets")
RUN_WITHOUT = """
import runpy, sys
class Absent:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {absent!r}:
            raise ImportError(f"{{name}} is not on the device machine")
sys.meta_path.insert(0, Absent())
sys.argv = [{script!r}, "--dry-run", "--output", {output!r}]
runpy.run_path({script!r}, run_name="__main__")
"""


def test_the_dry_run_measures_every_section_without_the_missing_packages(tmp_path: Path):
    script, output = REPO_ROOT / "scripts" / "bench" / "gpu_check.py", tmp_path / "gpu.md"
    code = RUN_WITHOUT.format(absent=ABSENT, script=str(script), output=str(output))
    env = {"PYTHONPATH": f"{REPO_ROOT / 'src'}:{script.parent}", "OPENPI_DATA_HOME": str(tmp_path / "data")}
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    table = output.read_text()
    for row in ("unpruned, eager", "keep 10%, compiled", "training step, LoRA", "serving, max_batch 4", "JAX float32"):
        assert row in table, row
    assert "skipped" not in table and "0 more after" in table, "no section skipped, no recompilation"
    last_row = [line for line in table.splitlines() if line.startswith("| ")][-1]
    assert done.stdout.rstrip().endswith(last_row), "the table is printed last"
