"""The prepared GPU script (benchmarks/gpu_device_check.py) run on the
simulator: its sweep must find every tiny case right and its report must
hold the table for docs/gpu.md.  (On a GPU the same script runs for real.)"""

import importlib.util
import os
import sys

import pytest

try:
    from fastxent.cuda import _numba_cuda
except ImportError as exc:  # pragma: no cover - no numba.cuda
    pytest.skip(f"numba.cuda unavailable: {exc}", allow_module_level=True)

HERE = os.path.dirname(os.path.abspath(__file__))
SCRIPT = os.path.join(os.path.dirname(HERE), "benchmarks", "gpu_device_check.py")


@pytest.mark.skipif(not _numba_cuda.SIMULATED, reason="the simulator mode of the script")
def test_device_script_on_the_simulator(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("gpu_device_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_device_check"] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    status = module.main(["--simulator", "--out", str(tmp_path), "--rounds", "1"])
    text = (tmp_path / "gpu_check.md").read_text()
    assert status == 0, text
    assert "(0 wrong)" in text
    assert "| 8x70 | float32 | fastxent | fwd+bwd |" in text
    assert "device copy" in text
    assert "| 24x8x20 | float32 | fastxent (numba arrays) | linear fwd+bwd |" in text
    assert (tmp_path / "gpu_check.json").exists()
