"""Small calls stay small: a (64, 10) float32 cross-entropy, fastxent's
forward and fused loss + gradient beside PyTorch's CPU forward
(``F.cross_entropy``), whose time is the yardstick: fastxent's forward should
be no slower, its fused call at most 1.5x it."""

import numpy as np


class SmallCrossEntropy:
    params = [["fastxent forward", "fastxent fused", "torch forward", "torch forward+backward"]]
    param_names = ["call"]
    rounds = 2
    repeat = (3, 10, 2.0)
    warmup_time = 0.1
    timeout = 180

    def setup(self, call):
        rng = np.random.default_rng(0)
        x = rng.normal(size=(64, 10)).astype(np.float32)
        y = rng.integers(0, 10, 64)
        if call.startswith("fastxent"):
            import fastxent as fx

            fn = fx.cross_entropy if call == "fastxent forward" else fx.cross_entropy_with_grad
            self.run = lambda: fn(x, y)
        else:
            try:
                import torch
                import torch.nn.functional as F
            except ImportError:
                raise NotImplementedError("PyTorch is not installed")
            tx, ty = torch.from_numpy(x), torch.from_numpy(y)
            if call == "torch forward":
                self.run = lambda: F.cross_entropy(tx, ty)
            else:
                def run():
                    xs = tx.detach().requires_grad_(True)
                    F.cross_entropy(xs, ty).backward()
                    return xs.grad
                self.run = run
        self.run()  # JIT compilation and caches outside the timing

    def time_64x10_float32(self, call):
        self.run()
