"""The command line: `python -m fastxent bench` prints its table (and JSON);
`python -m fastxent` without a command prints the usage."""

import json

import numpy as np

import pytest

from fastxent import __main__ as cli
from fastxent.tools import bench


def test_bench_table_and_json(tmp_path, capsys):
    out = tmp_path / "bench.json"
    md = tmp_path / "bench.md"
    assert bench.main(["--functions", "cross_entropy", "logsumexp", "--shapes", "64x10",
                       "--rounds", "1", "--no-peers", "--json", str(out), "--markdown", str(md)]) == 0
    table = md.read_text().splitlines()
    assert table[0].startswith("| function |") and len(table) == 6
    assert table[-1].startswith("Measured on: ") and "LLVM" in table[-1]
    printed = capsys.readouterr()
    assert "cross_entropy" in printed.out and "x vs numpy" in printed.out
    assert "[  1/2]" in printed.err  # progress
    assert "threads: numba" in printed.out.splitlines()[0]
    info = json.loads(out.read_text())["machine"]
    assert info["llvm_cpu"] and info["threads"]["numba"] >= 1
    assert info["avx2"] == ("AVX2" in info["isa"]) and isinstance(info["avx512"], bool)
    cells = json.loads(out.read_text())["cells"]
    assert {c["function"] for c in cells} == {"cross_entropy", "logsumexp"}
    assert all(c["seconds"]["fastxent"] > 0 and c["seconds"]["numpy"] > 0 for c in cells)


def test_every_public_function_is_benchmarked():
    import fastxent

    losses = {n for n in fastxent.__all__ if not n.startswith("linear") and n not in ("SoftmaxRegression", "reference")}
    assert losses <= set(bench.FUNCTIONS)


def test_usage(capsys):
    assert cli.main([]) == 2
    assert "bench" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        bench.main(["--shapes", "abc"])


def test_bench_option_cost_column(capsys):
    """A cross-entropy option is timed beside the plain hard-label call."""
    assert bench.main(["--functions", "cross_entropy_with_grad[label_smoothing]",
                       "cross_entropy[soft targets]", "--shapes", "64x10", "--rounds", "1",
                       "--no-peers"]) == 0
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith("cross_entropy")]
    assert len(rows) == 2 and "cost" in out
    assert all(row.rstrip().endswith("x") for row in rows)  # the cost ratio is filled in


def test_bench_scipy_column(capsys):
    pytest.importorskip("scipy")
    assert bench.main(["--functions", "softmax", "--shapes", "64x10", "--rounds", "1",
                       "--no-peers"]) == 0
    assert "x vs scipy" in capsys.readouterr().out


def test_bench_linear_runs_every_part_on_small_shapes(capsys):
    from fastxent.tools import bench_linear

    pytest.importorskip("sklearn")
    assert bench_linear.main(["--memory-shape", "256x16x100", "--speed-shape", "128x16x50",
                              "--sklearn-shape", "600x8x3", "--rounds", "1"]) == 0
    out = capsys.readouterr().out
    for part in ("[memory]", "[speed]", "[SoftmaxRegression]", "[digits]"):
        assert part in out
    if bench_linear._torch_pipeline(*bench_linear._problem(4, 2, 3, np.float64)) is not None:
        errors = [float(line.rsplit("=", 1)[1]) for line in out.splitlines()
                  if "max |fastxent - torch|" in line]
        assert len(errors) == 4 and max(errors) < 1e-12  # float64 agreement with autograd
