"""``python -m fastxent bench-torch``: fastxent.torch against PyTorch on the CPU,
float32, measured side by side in one run (interleaved rounds, medians).

1. **cross-entropy** -- ``CrossEntropyLoss`` forward + backward (the loss and
   ``torch.autograd.grad`` of it with respect to the logits) against
   ``torch.nn.CrossEntropyLoss`` eager and ``torch.compile`` of it, at
   4096x1000, 1024x32000 and 256x128000 (``--ce-shapes``).
2. **linear cross-entropy** -- ``LinearCrossEntropyLoss`` forward + backward
   (gradients of input and weight) against PyTorch 2.13's
   ``F.linear_cross_entropy`` without options (the reference path) and with
   ``LinearCrossEntropyOptions()`` (chunked), and the unfused
   ``F.cross_entropy(x @ W.T)``, at N x D x C = 2048x256x32000 and
   8192x256x32000 (``--linear-shapes``): time, and the peak memory each adds
   above its inputs and outputs (Linux's resident-set high-water mark, so
   every allocator counts), as a fraction of the full logits.

Goals (issue 14): cross-entropy >= 2x eager and >= 1.3x compiled at every
shape; linear >= 1.5x the fastest PyTorch variant; its extra memory <= 1/8 of
the logits and <= the chunked PyTorch variant's.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import warnings
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np

from fastxent.tools._harness import PeakRSS, extra_bytes, interleaved, parse_shapes


def _say(text: str) -> None:
    print(text, flush=True)


def machine() -> dict:
    """The shared machine record of ``python -m fastxent bench`` (with torch imported)."""
    import torch  # noqa: F401  (so that the record names its version and threads)

    from fastxent.tools.bench import machine as bench_machine

    return bench_machine()


def _interleaved(impls: Dict[str, Callable[[], object]], rounds: int) -> Dict[str, float]:
    """Median seconds per call, interleaved rounds, after an extra warm-up
    call each (torch.compile's first calls recompile)."""
    for fn in impls.values():
        fn()
    return interleaved(impls, rounds)


# ------------------------------------------------------------ cross-entropy
def cross_entropy_impls(n: int, c: int) -> Dict[str, Callable[[], object]]:
    import torch

    import fastxent.torch as xt

    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(n, c, generator=gen).requires_grad_()
    target = torch.randint(0, c, (n,), generator=gen)
    eager = torch.nn.CrossEntropyLoss()
    compiled = torch.compile(torch.nn.CrossEntropyLoss())
    ours = xt.CrossEntropyLoss()

    def fwd_bwd(loss_fn):
        def run():
            loss = loss_fn(logits, target)
            return loss, torch.autograd.grad(loss, logits)[0]
        return run

    return {"torch": fwd_bwd(eager), "torch.compile": fwd_bwd(compiled),
            "fastxent": fwd_bwd(ours)}


def bench_cross_entropy(shapes: List[Tuple[int, int]], rounds: int) -> List[dict]:
    _say(f"[cross-entropy] CrossEntropyLoss forward + backward, float32, {rounds} interleaved rounds")
    _say(f"  {'N x C':>12} {'torch ms':>9} {'compile ms':>11} {'fastxent ms':>12} "
         f"{'vs eager':>9} {'vs compile':>11}")
    rows = []
    for n, c in shapes:
        t = _interleaved(cross_entropy_impls(n, c), rounds)
        row = dict(n=n, c=c, **{k + "_s": v for k, v in t.items()},
                   vs_eager=t["torch"] / t["fastxent"], vs_compile=t["torch.compile"] / t["fastxent"])
        rows.append(row)
        _say(f"  {f'{n}x{c}':>12} {t['torch'] * 1e3:9.1f} {t['torch.compile'] * 1e3:11.1f} "
             f"{t['fastxent'] * 1e3:12.1f} {row['vs_eager']:8.2f}x {row['vs_compile']:10.2f}x"
             f"   (goals 2x, 1.3x)")
    return rows


# ---------------------------------------------------- linear cross-entropy
def linear_impls(n: int, d: int, c: int) -> Dict[str, Callable[[], object]]:
    import torch
    import torch.nn.functional as F

    import fastxent.torch as xt

    gen = torch.Generator().manual_seed(0)
    x = torch.randn(n, d, generator=gen).requires_grad_()
    W = (torch.randn(c, d, generator=gen) / d ** 0.5).requires_grad_()
    target = torch.randint(0, c, (n,), generator=gen)

    def fwd_bwd(loss_fn):
        def run():
            loss = loss_fn(x, W)
            dx, dW = torch.autograd.grad(loss, (x, W))
            return loss, dx, dW
        return run

    impls = {"fastxent": fwd_bwd(lambda x, W: xt.linear_cross_entropy(x, W, target))}
    if hasattr(F, "linear_cross_entropy"):
        impls["torch LCE"] = fwd_bwd(lambda x, W: F.linear_cross_entropy(x, W, target))
        options = torch.nn.LinearCrossEntropyOptions()
        impls["torch LCE chunked"] = fwd_bwd(
            lambda x, W: F.linear_cross_entropy(x, W, target, options=options))
    impls["torch unfused"] = fwd_bwd(lambda x, W: F.cross_entropy(x @ W.T, target))

    def gemms_only():  # the three products every variant needs: a lower bound, not a peer
        with torch.no_grad():
            logits = x @ W.T
            return logits @ W, logits.T @ x
    impls[GEMMS_ONLY] = gemms_only
    return impls


GEMMS_ONLY = "(3 GEMMs alone)"


def memory_child(impl: str, n: int, d: int, c: int) -> None:
    """(Run in a fresh process) print the extra bytes of one linear variant."""
    fn = linear_impls(n, d, c)[impl]
    fn()  # JIT, first-touch of the inputs
    print(json.dumps({"extra_bytes": extra_bytes(fn)}))


def measure_memory_in_child(impl: str, n: int, d: int, c: int) -> int:
    """Peak bytes one variant adds above its inputs and outputs, measured in
    a fresh process whose malloc maps every block over 64 KiB on its own
    (MALLOC_MMAP_THRESHOLD_), so that freed memory is returned and the next
    allocation shows in the resident-set high-water mark."""
    import fastxent

    root = os.path.dirname(os.path.dirname(os.path.abspath(fastxent.__file__)))
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536",
               PYTHONPATH=os.pathsep.join([root, os.environ.get("PYTHONPATH", "")]))
    code = (f"from fastxent.tools.bench_torch import memory_child; "
            f"memory_child({impl!r}, {n}, {d}, {c})")
    done = subprocess.run([sys.executable, "-W", "ignore", "-c", code], env=env,
                          capture_output=True, text=True, check=True)
    return int(json.loads(done.stdout.strip().splitlines()[-1])["extra_bytes"])


def bench_linear(shapes: List[Tuple[int, int, int]], rounds: int, memory: bool) -> List[dict]:
    _say(f"[linear cross-entropy] forward + backward (dx, dW), float32, {rounds} interleaved rounds")
    rows = []
    for n, d, c in shapes:
        logits_bytes = n * c * 4
        impls = linear_impls(n, d, c)
        _say(f"  N={n} D={d} C={c}: full logits {logits_bytes / 1e6:.0f} MB")
        times = _interleaved(impls, rounds)
        extra = {}
        if memory and PeakRSS.available():
            for key in impls:
                if key != GEMMS_ONLY:
                    extra[key] = measure_memory_in_child(key, n, d, c)
        fastest_torch = min(v for k, v in times.items() if k not in ("fastxent", GEMMS_ONLY))
        for key, seconds in times.items():
            mem = (f"  extra memory {extra[key] / 1e6:8.1f} MB = {extra[key] / logits_bytes:.3f} x logits"
                   if key in extra else "")
            _say(f"    {key:<18} {seconds * 1e3:9.1f} ms{mem}")
        row = dict(n=n, d=d, c=c, **{k + "_s": v for k, v in times.items()},
                   **{k + "_extra_bytes": v for k, v in extra.items()},
                   vs_fastest_torch=fastest_torch / times["fastxent"])
        _say(f"    fastxent is {row['vs_fastest_torch']:.2f}x the fastest PyTorch variant (goal 1.5x); "
             f"the three GEMMs alone take {times[GEMMS_ONLY] / times['fastxent']:.0%} of its time")
        if extra:
            chunked = extra.get("torch LCE chunked")
            _say(f"    fastxent extra memory {extra['fastxent'] / logits_bytes:.3f} x logits (goal <= 0.125)"
                 + (f", {extra['fastxent'] / max(chunked, 1):.2f} x the chunked PyTorch variant's "
                    "(goal <= 1)" if chunked is not None else ""))
        rows.append(row)
    return rows


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fastxent bench-torch", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ce-shapes", nargs="+", default=["4096x1000", "1024x32000", "256x128000"],
                        metavar="NxC")
    parser.add_argument("--linear-shapes", nargs="+", default=["2048x256x32000", "8192x256x32000"],
                        metavar="NxDxC")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory measurement")
    parser.add_argument("--skip", choices=["ce", "linear"], action="append", default=[])
    parser.add_argument("--json", metavar="FILE", help="write the measurements as JSON")
    args = parser.parse_args(argv)
    ce_shapes = parse_shapes(parser, args.ce_shapes)
    linear_shapes = parse_shapes(parser, args.linear_shapes, dims=3, example="2048x256x32000")
    try:
        import torch  # noqa: F401
    except ImportError:
        _say("bench-torch needs PyTorch (pip install 'fastxent[torch]')")
        return 1
    warnings.filterwarnings("ignore", category=UserWarning)
    from fastxent.tools.bench import format_machine

    info = machine()
    _say(f"machine: {format_machine(info)}")
    results = {"machine": info}
    if "ce" not in args.skip:
        results["cross_entropy"] = bench_cross_entropy(ce_shapes, args.rounds)
    if "linear" not in args.skip:
        results["linear_cross_entropy"] = bench_linear(linear_shapes, args.rounds,
                                                       memory=not args.no_memory)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(results, fh, indent=2)
    return 0
