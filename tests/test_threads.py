"""Concurrent calls from many Python threads: same results as serial calls,
bit for bit, and no abort (Numba's workqueue layer would abort)."""

from concurrent.futures import ThreadPoolExecutor

import numpy as np

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
