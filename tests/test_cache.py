"""Numba's on-disk cache: several processes compiling into one empty cache
directory at once all succeed and agree, and a later process loads the
kernels from it instead of compiling."""

import os
import subprocess
import sys

import numpy as np

SCRIPT = """
import time, numpy as np
start = time.perf_counter()
import fastxent
x = np.linspace(-3, 3, 40, dtype=np.float32).reshape(4, 10)
value = fastxent.logsumexp(x)
print(repr(value.tolist()), time.perf_counter() - start)
"""


def _run_many(cache_dir, n):
    env = dict(os.environ, NUMBA_CACHE_DIR=str(cache_dir))
    procs = [subprocess.Popen([sys.executable, "-c", SCRIPT], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=env) for _ in range(n)]
    results = []
    for p in procs:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
        values, seconds = out.rsplit(" ", 1)
        results.append((values, float(seconds)))
    return results


def test_concurrent_cold_starts_share_one_cache(tmp_path):
    cold = _run_many(tmp_path, 2)
    assert len({values for values, _ in cold}) == 1
    assert any(f.endswith(".nbi") for _, _, files in os.walk(tmp_path) for f in files)
    (warm_values, _), = _run_many(tmp_path, 1)
    assert warm_values == cold[0][0]
    expected = np.log(np.exp(np.linspace(-3, 3, 40).reshape(4, 10)).sum(-1))
    np.testing.assert_allclose(eval(warm_values), expected, rtol=1e-6)
