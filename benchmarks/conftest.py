"""pytest-benchmark suite for fastxent (outside the default test run: pytest's
testpaths is tests/).  See docs/benchmarking.md.

The cases -- functions, implementations, shapes, dtypes, inputs and the peers'
code -- come from the same table as the asv suites,
``asv_bench/benchmarks/cases.py``, loaded here by path.

Options:
  --fx-shapes=default|full|smoke   default: cases.SHAPES (the asv shapes);
                                   full: issue 5's shapes (65536x10 ... 256x128000);
                                   smoke: a few rows of each class count, the
                                   default under --benchmark-disable (CI), so
                                   that a run only proves that nothing rotted.
  --fx-impls=fastxent,numpy,...    a subset of the implementations
  --fx-dtypes=float32,...          a subset of the dtypes
Every function is a test parameter: select with -k, e.g.
  -k "cross_entropy_with_grad and float32".
"""

from __future__ import annotations

import importlib.util
import pathlib
import sys

import pytest

_CASES_FILE = pathlib.Path(__file__).resolve().parents[1] / "asv_bench" / "benchmarks" / "cases.py"


def _load_cases():
    name = "fastxent_bench_cases"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, _CASES_FILE)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


cases = _load_cases()

# Same class counts as cases.SHAPES, a few rows each: every kernel family and
# every peer runs, in seconds (single-threaded kernels only).
SMOKE_SHAPES = {"64x10": (64, 10), "8x1000": (8, 1000), "2x32000": (2, 32000)}


def pytest_addoption(parser):
    group = parser.getgroup("fastxent benchmarks")
    group.addoption("--fx-shapes", choices=["default", "full", "smoke"], default=None,
                    help="shape set: default (asv's), full (issue 5's), smoke "
                         "(tiny; the default with --benchmark-disable)")
    group.addoption("--fx-impls", default=None,
                    help="comma-separated implementations (default: " + ",".join(cases.IMPLS) + ")")
    group.addoption("--fx-dtypes", default=None,
                    help="comma-separated dtypes (default: " + ",".join(cases.DTYPES) + ")")


def _selected(config, option: str, allowed: list) -> list:
    value = config.getoption(option)
    if not value:
        return list(allowed)
    chosen = [v.strip() for v in value.split(",") if v.strip()]
    unknown = sorted(set(chosen) - set(allowed))
    if unknown:
        raise ValueError(f"{option}: unknown {unknown}; choose from {allowed}")
    return chosen


def shapes_for(config) -> dict:
    which = config.getoption("--fx-shapes")
    if which is None:
        disabled = config.getoption("benchmark_disable", default=False)
        which = "smoke" if disabled else "default"
    return {"default": cases.SHAPES, "full": cases.FULL_SHAPES, "smoke": SMOKE_SHAPES}[which]


@pytest.fixture(scope="session")
def fx_shapes(pytestconfig) -> dict:
    """label -> (N, C) of the shape set chosen for this run."""
    return shapes_for(pytestconfig)


def pytest_generate_tests(metafunc):
    """Parametrise over function x shape x dtype x implementation, in that
    order: the implementations of one cell run one after another, on the same
    (cached) inputs, and sit side by side in one benchmark group."""
    names = ("function", "shape", "dtype", "impl")
    if not all(n in metafunc.fixturenames for n in names):
        return
    config = metafunc.config
    shapes = shapes_for(config)
    impls = _selected(config, "--fx-impls", cases.IMPLS)
    dtypes = _selected(config, "--fx-dtypes", cases.DTYPES)
    values = [(f, s, d, i) for f in cases.FUNCTION_NAMES for s in shapes for d in dtypes
              for i in impls if i in cases.impls_for(f)]
    metafunc.parametrize(names, values, ids=["-".join(v) for v in values])
