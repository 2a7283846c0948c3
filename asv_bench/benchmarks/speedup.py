"""Speed-up of fastxent over the NumPy reference (``fastxent.reference``),
recorded as a number (unit "x": NumPy time / fastxent time, higher is better)
so that the dashboard plots it over the history of main.  Both are timed in
the same process, in interleaved rounds (medians), so machine noise cancels."""

from . import cases


class SpeedupOverNumPy:
    params = [cases.FUNCTION_NAMES, list(cases.SHAPES), cases.DTYPES]
    param_names = ["function", "shape", "dtype"]
    unit = "x"
    timeout = 300

    def setup(self, function, shape, dtype):
        self.calls = {impl: cases.prepare(impl, function, shape, dtype)
                      for impl in ("fastxent", "numpy")}

    def track_speedup_over_numpy(self, function, shape, dtype):
        seconds = cases.interleaved_seconds(self.calls, rounds=3)
        return seconds["numpy"] / seconds["fastxent"]


class SpeedupOverFastestPeer:
    """fastxent against the faster of PyTorch and JAX (issue 5's yardstick),
    float32, for the functions both peers have."""

    params = [["logsumexp", "softmax", "log_softmax", "cross_entropy", "cross_entropy_with_grad",
               "linear_cross_entropy_with_grad"], list(cases.SHAPES)]
    param_names = ["function", "shape"]
    unit = "x"
    timeout = 300

    def setup(self, function, shape):
        self.calls = {"fastxent": cases.prepare("fastxent", function, shape, "float32")}
        for peer in ("torch", "jax"):
            try:
                self.calls[peer] = cases.prepare(peer, function, shape, "float32")
            except NotImplementedError:
                pass
        if len(self.calls) == 1:
            raise NotImplementedError("neither PyTorch nor JAX is installed")

    def track_speedup_over_fastest_peer(self, function, shape):
        seconds = cases.interleaved_seconds(self.calls, rounds=3)
        fastest_peer = min(t for impl, t in seconds.items() if impl != "fastxent")
        return fastest_peer / seconds["fastxent"]
