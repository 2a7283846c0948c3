"""Concurrent calls from many Python threads: same results as serial calls,
bit for bit, and no abort (Numba's workqueue layer would abort)."""

import os
import subprocess
import sys
import textwrap
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

import fastxent as fx


def test_64_calls_from_8_threads(rng):
    jobs = []
    for k in range(64):
        n, c = [(2048, 40), (64, 10), (16, 5000), (300, 1000)][k % 4]
        jobs.append(((rng.standard_normal((n, c)) * 3).astype(np.float32 if k % 2 else np.float64),
                     rng.integers(0, c, n)))

    def work(job):
        x, y = job
        loss, grad = fx.cross_entropy_with_grad(x, y)
        return loss, grad, fx.logsumexp(x), fx.softmax(x), fx.entropy(fx.softmax(x))

    serial = [work(j) for j in jobs]
    with ThreadPoolExecutor(max_workers=8) as pool:
        concurrent = list(pool.map(work, jobs))
    for s, c in zip(serial, concurrent):
        for a, b in zip(s, c):
            np.testing.assert_array_equal(a, b)



def _family_jobs(rng):
    """One job per function family, sized for the parallel path (>= 2^16 elements)."""
    x = (rng.standard_normal((512, 300)) * 3).astype(np.float32)
    x64 = x.astype(np.float64)
    y = rng.integers(0, 300, 512)
    y[::9] = -100
    p = rng.random((512, 300))
    p /= p.sum(-1, keepdims=True)
    q = rng.random((512, 300)) + 0.01
    w = rng.random(300) + 0.1
    return [
        lambda: fx.cross_entropy_with_grad(x, y, weight=w, label_smoothing=0.1, out=np.empty_like(x)),
        lambda: fx.cross_entropy_with_grad(x64, p, reduction="none", grad_output=np.ones(512)),
        lambda: fx.binary_cross_entropy_with_logits_with_grad(x, p.astype(np.float32), pos_weight=w),
        lambda: fx.binary_cross_entropy_with_grad(p, q / q.max(), weight=w),
        lambda: (fx.entropy_with_grad(p), fx.kl_divergence_with_grad(p, q), fx.cross_entropy_probs_with_grad(p, q)),
        lambda: (fx.logsumexp(x64, axis=0), fx.softmax(x, axis=(0, 1)), fx.log_softmax(np.asfortranarray(x64))),
        lambda: fx.cross_entropy(x[:, :10], y % 10, reduction="sum"),  # blocks of short rows
        lambda: fx.cross_entropy_with_grad(x.astype(np.float16), y),
    ]


def _flatten(result):
    if isinstance(result, tuple):
        return [leaf for item in result for leaf in _flatten(item)]
    return [np.asarray(result)]


def test_every_family_concurrently(rng):
    """64 calls across every function family from 8 threads at once, each
    result bit-for-bit equal to the serial one."""
    jobs = _family_jobs(rng) * 8
    serial = [_flatten(job()) for job in jobs]
    with ThreadPoolExecutor(max_workers=8) as pool:
        futures = [pool.submit(job) for job in jobs]
        concurrent = [_flatten(f.result()) for f in futures]
    for k, (s, c) in enumerate(zip(serial, concurrent)):
        assert len(s) == len(c)
        for a, b in zip(s, c):
            np.testing.assert_array_equal(a, b, err_msg=f"job {k}")


def test_errors_in_threads_do_not_disturb_the_others(rng):
    x = rng.standard_normal((400, 200))
    good = rng.integers(0, 200, 400)
    bad = good.copy()
    bad[123] = 200
    expected = fx.cross_entropy_with_grad(x, good)

    def job(k):
        if k % 2:
            with pytest.raises(IndexError, match="row 123"):
                fx.cross_entropy_with_grad(x, bad)
            return None
        return fx.cross_entropy_with_grad(x, good)

    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(job, range(64)))
    for r in results[::2]:
        assert r[0] == expected[0]
        np.testing.assert_array_equal(r[1], expected[1])


SCRIPT = textwrap.dedent("""
    import sys
    from concurrent.futures import ThreadPoolExecutor
    import numpy as np
    import fastxent as fx

    rng = np.random.default_rng(0)
    jobs = [(rng.standard_normal((256, 1024)), rng.integers(0, 1024, 256)) for _ in range(16)]

    def work(job):
        x, y = job
        return fx.cross_entropy_with_grad(x, y)[0], fx.logsumexp(x).sum(), fx.softmax(x).sum()

    # the very first calls of the process run concurrently (lazy set-up races)
    with ThreadPoolExecutor(max_workers=8) as pool:
        concurrent = list(pool.map(work, jobs * 4))
    serial = [work(j) for j in jobs * 4]
    assert concurrent == serial, "concurrent results differ from serial ones"
    print("ok")
""")


@pytest.mark.parametrize("layer", [None, "workqueue"])
def test_fresh_process_concurrent_first_calls_never_abort(layer):
    """In a fresh interpreter (first launches racing) and with Numba's
    workqueue layer forced (which aborts on concurrent parallel launches
    unless fastxent serialises them), the process exits cleanly."""
    env = dict(os.environ)
    env.pop("NUMBA_THREADING_LAYER", None)
    if layer:
        env["NUMBA_THREADING_LAYER"] = layer
    proc = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, env=env, timeout=300,
                          cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert proc.returncode == 0, (proc.returncode, proc.stderr[-3000:])
    assert proc.stdout.strip().endswith("ok")
