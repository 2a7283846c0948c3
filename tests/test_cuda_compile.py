"""The hot CUDA kernels compiled for sm_90 (no GPU needed) and held against
the budgets recorded in ``tests/cuda_budgets.json``: no local memory in the
element loops, spills no larger than recorded, at least the recorded loads
in flight and load width, and SASS instructions per element no more than
recorded, per row pass and path (see ``tests/sass.py``).

Skipped when the toolchain is missing: numba-cuda with NVVM and NVRTC, and
ptxas and nvdisasm (``pip install 'fastxent[cuda-compile]'`` brings all of
them).  The compilation runs in a subprocess, because it needs numba.cuda
without the simulator that the rest of the suite switches on.
"""

import json
import os
import subprocess
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
BUDGETS = os.path.join(HERE, "cuda_budgets.json")


def _budgets():
    with open(BUDGETS) as fh:
        return json.load(fh)


@pytest.fixture(scope="module")
def figures(tmp_path_factory):
    budgets = _budgets()
    out = tmp_path_factory.mktemp("cuda_compile") / "figures.json"
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_ENABLE_CUDASIM"}
    cmd = [sys.executable, os.path.join(HERE, "cuda_compile.py"), "--cc", budgets["cc"], "--sass",
           "--require-sass", "--json", str(out)]
    for name in budgets["kernels"]:
        cmd += ["--only", name]
    run = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=1800)
    if run.returncode == 3:
        pytest.skip(run.stdout.strip().splitlines()[-1])
    assert run.returncode == 0, run.stdout + run.stderr
    with open(out) as fh:
        return {r["name"]: r for r in json.load(fh)}


@pytest.mark.parametrize("name", sorted(_budgets()["kernels"]))
def test_kernel_within_budget(figures, name):
    budget = _budgets()["kernels"][name]
    got = figures[name]
    assert "error" not in got, got["error"]
    assert got["spill_bytes"] <= budget["spill_bytes"], (name, got["spill_bytes"])
    assert got["sass"]["loop_spills"] <= budget["loop_spills"], f"{name}: local memory in an element loop"
    for pass_name, paths in budget["passes"].items():
        assert pass_name in got["sass"]["passes"], f"{name}: no main loop for {pass_name}"
        for path, limit in paths.items():
            loop = got["sass"]["passes"][pass_name].get(path)
            assert loop is not None, f"{name}: {pass_name} has no {path} loop"
            where = f"{name} {pass_name} {path}"
            assert loop["per_element"] <= limit["per_element"], (where, loop)
            assert loop["in_flight"] >= limit["in_flight"], (where, loop)
            assert loop["load_width"] >= limit["load_width"], (where, loop)


def test_fused_loss_and_gradient_budget(figures):
    """The fused loss + gradient's two passes (vector path) together."""
    budget = _budgets()["fused"]
    got = figures[budget["kernel"]]["sass"]["passes"]
    total = sum(got[p]["vector"]["per_element"] for p in budget["passes"])
    assert total <= budget["per_element"], total
