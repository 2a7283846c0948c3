"""Every public fastxent function beside its NumPy reference (and SciPy,
PyTorch and JAX where installed), one benchmark group per function, shape and
dtype.  Parametrised in conftest.py from asv_bench/benchmarks/cases.py."""

import pytest

import fastxent_bench_cases as cases  # registered by conftest.py


def test_function(benchmark, fx_shapes, function, shape, dtype, impl):
    try:
        call = cases.prepare(impl, function, fx_shapes[shape], dtype)
    except NotImplementedError as exc:
        pytest.skip(str(exc))
    benchmark.group = f"{function} {shape} {dtype}"
    benchmark.extra_info.update(function=function, shape=shape, dtype=dtype, impl=impl)
    benchmark(call)
