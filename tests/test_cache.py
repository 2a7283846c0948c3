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


BITS_SCRIPT = """
import hashlib, numpy as np, fastxent as fx
rng = np.random.default_rng(0)
x = rng.standard_normal((40, 3653))              # above the parallel threshold
t = rng.random((40, 3653)); t /= t.sum(-1, keepdims=True)
p = rng.random((40, 3653)); p /= p.sum(-1, keepdims=True)
y = rng.integers(0, 3653, 40)
small = x[:4, :100].copy()                       # the serial kernels
results = [*fx.cross_entropy_with_grad(x, t), *fx.cross_entropy_with_grad(x, y),
           fx.softmax(x), fx.log_softmax(x), fx.logsumexp(x), fx.softmax(small),
           *fx.kl_divergence_with_grad(p, t), *fx.binary_cross_entropy_with_grad(p, t),
           *fx.cross_entropy_with_grad(x.astype(np.float32), t.astype(np.float32))]
print(" ".join(hashlib.sha256(np.ascontiguousarray(r).tobytes()).hexdigest()[:16] for r in results))
"""


def test_fresh_compile_and_cache_load_give_the_same_bits(tmp_path):
    """Issue 17, item 6: the process that compiles the kernels and the one
    that loads them from the cache must compute the same bits (they differed
    in the last bits when calls bound to differently optimised copies of
    the helpers; see fastxent/cpu/_jit.py)."""
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path))
    runs = []
    for _ in range(2):
        done = subprocess.run([sys.executable, "-c", BITS_SCRIPT], capture_output=True,
                              text=True, env=env, timeout=600)
        assert done.returncode == 0, done.stderr
        runs.append(done.stdout.split())
    assert any(f.endswith(".nbi") for _, _, files in os.walk(tmp_path) for f in files)
    fresh, cached = runs
    assert fresh == cached
