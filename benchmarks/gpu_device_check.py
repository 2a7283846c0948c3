"""The one prepared script for a task that is lent a GPU (issue 16 item 5):
correctness on hardware, the CUDA tests on the device, and timings, in one
run, ending with a Markdown table for docs/gpu.md.

On the device machine (see /work/.library/device/README.md; a Liger-Kernel
wheel travels in ``.whl/``, made here with
``python3 -m pip download --no-deps --only-binary=:all: -d .whl liger-kernel``)::

    python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl; \
    export PYTHONPATH=/tmp/site:.; \
    PYTHONUNBUFFERED=1 python3 benchmarks/gpu_device_check.py --out $OUT

Stages (each one is reported, a failure does not stop the next):

1. **sweep**: every CUDA function family against the float64 CPU reference
   on sampled rows, for PyTorch tensors, CuPy arrays and Numba device arrays,
   with nasty rows (+-inf, NaN, 1e30, one class, all -inf), strided and
   transposed inputs, ``out=`` (separate, strided, in place), float16,
   C = 262144, and N*C > 2^31 elements; every output is poisoned (NaN)
   before the run and must be fully written.  Counts wrong answers.
2. **tests**: ``pytest tests/test_cuda.py`` on the device (no simulator).
3. **timing** with CUDA events, median of rounds, inputs rotated over
   several buffers (so that no shape is timed out of L2), at 8192x32000 and
   16384x131072 float32, 65536x10 and 16384x131072 float16: fastxent forward,
   loss+gradient and loss+gradient in place; PyTorch eager forward and
   forward+backward; torch.compile; Liger-Kernel's cross-entropy when
   importable; and a device-to-device copy in the same run (the yardstick).
4. **linear**: the fused linear cross-entropy, loss + dx, dW, dbias, at
   N x D x C = 8192 x 256 x 32000 float32: ``fx.linear_cross_entropy_with_grad``
   on Numba device arrays (the tiled numba.cuda GEMM) and on torch tensors
   (torch.matmul, i.e. cuBLAS), ``fastxent.torch.linear_cross_entropy``
   forward+backward, against torch's ``F.linear_cross_entropy`` (torch >=
   2.13; else the unfused ``F.cross_entropy(x @ W.T + b)``), with TFLOP/s
   (6 N D C per call) and the peak memory torch's allocator saw above the
   inputs.  The sweep (stage 1) also checks the linear cross-entropy of every
   array kind against the float64 reference.

``--simulator`` runs the same logic on Numba's CUDA simulator with tiny
shapes and Numba device arrays only (host clocks instead of events): a check
of the script itself, used by tests/test_gpu_device_check.py.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Dict, List, Optional

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LINEAR_SHAPES = [("float32", 8192, 256, 32000)]
SIMULATOR_LINEAR_SHAPES = [("float32", 24, 8, 20)]
TIMING_SHAPES = [("float32", 8192, 32000), ("float32", 16384, 131072), ("float32", 65536, 10),
                 ("float16", 16384, 131072)]
SIMULATOR_SHAPES = [("float32", 8, 70), ("float32", 40, 5), ("float16", 4, 40)]
SAMPLE_ROWS = 16


@dataclass
class Timing:
    shape: str
    dtype: str
    implementation: str
    operation: str
    ms: float
    bytes_moved: int
    gbps: float = 0.0
    pct_copy: float = 0.0
    vs_eager: float = 0.0
    note: str = ""


@dataclass
class Report:
    device: str
    versions: Dict[str, str]
    sweep: List[str] = field(default_factory=list)
    wrong: int = 0
    cases: int = 0
    tests: str = "not run"
    timings: List[Timing] = field(default_factory=list)


# ------------------------------------------------------------------ arrays
class Kind:
    """One kind of device array: how to make one from NumPy and read it back."""

    def __init__(self, name: str, to_device: Callable, to_host: Callable, empty_like: Callable):
        self.name, self.to_device, self.to_host, self.empty_like = name, to_device, to_host, empty_like


def array_kinds(simulator: bool) -> List[Kind]:
    from fastxent.cuda._numba_cuda import cuda

    kinds = [Kind("numba", lambda a: cuda.to_device(np.ascontiguousarray(a)),
                  lambda d: np.asarray(d.copy_to_host()),
                  lambda d: cuda.to_device(np.full(d.shape, np.nan, dtype=d.dtype)))]
    if simulator:
        return kinds
    try:
        import torch

        if torch.cuda.is_available():
            kinds.append(Kind("torch", lambda a: torch.from_numpy(np.ascontiguousarray(a)).cuda(),
                              lambda t: t.detach().cpu().numpy(),
                              lambda t: torch.full_like(t, math.nan)))
    except ImportError:
        pass
    try:
        import cupy

        kinds.append(Kind("cupy", lambda a: cupy.asarray(a), cupy.asnumpy,
                          lambda c: cupy.full_like(c, math.nan)))
    except ImportError:
        pass
    return kinds


# ------------------------------------------------------------------- sweep
def nasty(rng: np.random.Generator, n: int, c: int) -> np.ndarray:
    """Random logits with nasty rows planted (when there are rows to spare)."""
    x = rng.normal(size=(n, c)) * 4
    rows = [r for r in (1, 2, 3, 4, 5) if r < n]
    specials = [(lambda r: x.__setitem__((r, slice(None)), -np.inf)),
                (lambda r: x.__setitem__((r, c // 2), np.inf)),
                (lambda r: x.__setitem__((r, 0), np.nan)),
                (lambda r: x.__setitem__((r, slice(None, None, 2)), 1e30)),
                (lambda r: x.__setitem__((r, slice(1, None)), -40.0))]  # one class dominates
    for r, plant in zip(rows, specials):
        plant(r)
    return x


def _close(got: np.ndarray, want: np.ndarray, rtol: float, atol: float) -> bool:
    got, want = np.asarray(got, dtype=np.float64), np.asarray(want, dtype=np.float64)
    if got.shape != want.shape:
        return False
    same_nan = np.isnan(got) == np.isnan(want)
    finite = ~np.isnan(want)
    return bool(same_nan.all() and np.allclose(got[finite], want[finite], rtol=rtol, atol=atol,
                                               equal_nan=True))


def sweep(report: Report, kinds: List[Kind], simulator: bool, large: bool) -> None:
    import fastxent as fx
    from fastxent import reference as ref

    rng = np.random.default_rng(16)

    def case(label: str, ok: bool, detail: str = "") -> None:
        report.cases += 1
        if not ok:
            report.wrong += 1
            report.sweep.append(f"WRONG {label} {detail}")
            print(f"  WRONG {label} {detail}", flush=True)

    shapes = [(6, 70), (40, 5), (3, 1)] if simulator else [(64, 1000), (300, 10), (9, 32003),
                                                          (4, 262144), (1000, 1)]
    for kind in kinds:
        for n, c in shapes:
            x = nasty(rng, n, c)
            y = rng.integers(0, c, size=n)
            tol = dict(rtol=1e-10, atol=1e-12)
            for name in ("logsumexp", "softmax", "log_softmax"):
                got = kind.to_host(getattr(fx, name)(kind.to_device(x)))
                case(f"{kind.name} {name} {n}x{c}", _close(got, getattr(ref, name)(x), **tol))
            # loss + gradient into a poisoned separate out, and in place
            for smoothing in (0.0, 0.1):
                want = ref.cross_entropy_with_grad(x, y, reduction="none", label_smoothing=smoothing)
                d = kind.to_device(x)
                out = kind.empty_like(d)
                loss, grad = fx.cross_entropy_with_grad(d, kind.to_device(y), reduction="none",
                                                        label_smoothing=smoothing, out=out)
                case(f"{kind.name} ce+grad out= {n}x{c} eps={smoothing}",
                     _close(kind.to_host(loss), want[0], **tol)
                     and _close(kind.to_host(grad), want[1], **tol))
                fx.cross_entropy_with_grad(d, kind.to_device(y), reduction="none",
                                           label_smoothing=smoothing, out=d)
                case(f"{kind.name} ce+grad in place {n}x{c} eps={smoothing}",
                     _close(kind.to_host(d), want[1], **tol))
            # float32 and float16 inputs
            for dtype, rtol in ((np.float32, 1e-5), (np.float16, 2e-3)):
                xs = rng.normal(size=(n, c)).astype(dtype)
                want = ref.cross_entropy_with_grad(xs.astype(np.float64), y)
                loss, grad = fx.cross_entropy_with_grad(kind.to_device(xs), kind.to_device(y))
                case(f"{kind.name} ce+grad {np.dtype(dtype).name} {n}x{c}",
                     _close(kind.to_host(loss), want[0], rtol, rtol * 1e-2)
                     and _close(kind.to_host(grad), want[1], rtol, rtol * 1e-2))
        # strided and transposed inputs, a strided out
        x = rng.normal(size=(12, 80))
        y = rng.integers(0, 40, size=12)
        d = kind.to_device(x)
        strided = d[:, ::2]
        got = fx.cross_entropy_with_grad(strided, kind.to_device(y), reduction="none")
        want = ref.cross_entropy_with_grad(x[:, ::2], y, reduction="none")
        case(f"{kind.name} strided input", _close(kind.to_host(got[0]), want[0], 1e-10, 1e-12)
             and _close(kind.to_host(got[1]), want[1], 1e-10, 1e-12))
        got = fx.softmax(d.T if kind.name != "torch" else d.t(), axis=0)
        case(f"{kind.name} transposed softmax", _close(kind.to_host(got), ref.softmax(x.T, axis=0),
                                                       1e-10, 1e-12))
        big = kind.empty_like(kind.to_device(np.zeros((12, 80))))
        fx.cross_entropy_with_grad(kind.to_device(x[:, ::2].copy()), kind.to_device(y),
                                   reduction="none", out=big[:, ::2])
        host_big = kind.to_host(big)
        case(f"{kind.name} strided out", _close(host_big[:, ::2], want[1], 1e-10, 1e-12)
             and bool(np.isnan(host_big[:, 1::2]).all()))
    for kind in kinds:
        _sweep_linear(kind, case, rng, simulator)
    if large and not simulator:
        _sweep_large(report, kinds, case, rng)


def _sweep_linear(kind: Kind, case: Callable, rng, simulator: bool) -> None:
    """The fused linear cross-entropy (all three GEMM layouts, split inner
    dimensions, the bias, l2, smoothing, ignored rows, several chunks)
    against the float64 reference with full logits."""
    import fastxent as fx
    from fastxent import reference as ref

    shapes = [(20, 6, 30)] if simulator else [(300, 64, 1000), (1000, 129, 5003), (37, 256, 32000)]
    for n, d, c in shapes:
        x = rng.normal(size=(n, d))
        W = rng.normal(size=(c, d)) / math.sqrt(d)
        b = rng.normal(size=c)
        y = rng.integers(0, c, size=n)
        y[::9] = -100
        kw = dict(label_smoothing=0.1, l2=0.01)
        want_loss, want = ref.linear_cross_entropy_with_grad(x, W, y, bias=b, **kw)
        for dtype, rtol in ((np.float64, 1e-9), (np.float32, 2e-4)):
            dx_, dW_, db_ = (kind.to_device(a.astype(dtype)) for a in (x, W, b))
            loss, grads = fx.linear_cross_entropy_with_grad(dx_, dW_, kind.to_device(y), bias=db_,
                                                            chunk_size=-(-n // 3), **kw)
            ok = _close(kind.to_host(loss), want_loss, rtol, 0.0) and all(
                _close(kind.to_host(g), w, rtol, rtol * float(np.abs(w).max()))
                for g, w in zip(grads, want))
            case(f"{kind.name} linear ce+grad {n}x{d}x{c} {np.dtype(dtype).name}", ok)


def _sweep_large(report: Report, kinds: List[Kind], case: Callable, rng) -> None:
    """N*C > 2^31 (float16 logits, 8 GiB) on the first GPU kind: sampled rows."""
    import fastxent as fx
    from fastxent import reference as ref

    kind = next((k for k in kinds if k.name == "torch"), None)
    if kind is None:
        return
    import torch

    n, c = 16384, 131073  # 2.15e9 elements, odd C (the scalar path)
    x = (torch.randn(n, c, device="cuda", dtype=torch.float16) * 4)
    y = torch.randint(0, c, (n,), device="cuda")
    loss, grad = fx.cross_entropy_with_grad(x, y, reduction="none")
    rows = torch.tensor([0, 1, n // 2, n - 2, n - 1], device="cuda")
    want = ref.cross_entropy_with_grad(x[rows].double().cpu().numpy(), y[rows].cpu().numpy(),
                                       reduction="none")
    case(f"torch ce+grad {n}x{c} float16 (N*C > 2^31)",
         _close(loss[rows].double().cpu().numpy(), want[0], 2e-3, 1e-5)
         and _close(grad[rows].double().cpu().numpy(), want[1], 2e-3, 1e-5))
    del x, grad
    torch.cuda.empty_cache()


# ------------------------------------------------------------------ timing
def _timer(simulator: bool):
    """(time(fn, iters, rounds) -> median ms per call)."""
    if simulator:
        def host_time(fn, iters, rounds):
            samples = []
            for _ in range(rounds):
                start = time.perf_counter()
                for k in range(iters):
                    fn(k)
                samples.append((time.perf_counter() - start) * 1e3 / iters)
            return statistics.median(samples)
        return host_time
    import torch

    def event_time(fn, iters, rounds):
        for k in range(2):
            fn(k)
        torch.cuda.synchronize()
        samples = []
        for _ in range(rounds):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for k in range(iters):
                fn(k)
            end.record()
            end.synchronize()
            samples.append(start.elapsed_time(end) / iters)
        return statistics.median(samples)
    return event_time


def timing(report: Report, shapes, simulator: bool, rounds: int, use_compile: bool) -> None:
    import fastxent as fx

    time_fn = _timer(simulator)
    for dtype_name, n, c in shapes:
        shape = f"{n}x{c}"
        rows: List[Timing] = []
        itemsize = np.dtype(dtype_name).itemsize
        nc = n * c * itemsize
        if simulator:
            from fastxent.cuda._numba_cuda import cuda

            rng = np.random.default_rng(0)
            inputs = [cuda.to_device(rng.normal(size=(n, c)).astype(dtype_name)) for _ in range(2)]
            labels = cuda.to_device(rng.integers(0, c, size=n))
            copies = [cuda.device_array_like(inputs[0])]
            copy = lambda k: copies[0].copy_to_device(inputs[k % len(inputs)])  # noqa: E731
            framework = {}
        else:
            import torch

            free = torch.cuda.mem_get_info()[0]
            n_inputs = max(2, min(4, int(free * 0.5 // max(nc, 1)) - 2))
            if (n_inputs + 3) * nc > free:
                report.timings.append(Timing(shape, dtype_name, "-", "-", math.nan, 0,
                                             note="skipped: not enough memory"))
                continue
            gen = torch.Generator(device="cuda").manual_seed(0)
            dt = getattr(torch, dtype_name)
            inputs = [torch.randn(n, c, device="cuda", dtype=dt, generator=gen) * 4
                      for _ in range(n_inputs)]
            labels = torch.randint(0, c, (n,), device="cuda", generator=gen)
            dst = torch.empty_like(inputs[0])
            copy = lambda k: dst.copy_(inputs[k % len(inputs)])  # noqa: E731
            framework = _framework_candidates(torch, labels, use_compile)
        iters = 1 if simulator else int(min(100, max(5, 4e9 // max(nc, 1))))
        t_copy = time_fn(copy, iters, rounds)
        copy_gbps = 2 * nc / t_copy / 1e6
        rows.append(Timing(shape, dtype_name, "device copy", "copy", t_copy, 2 * nc, copy_gbps, 100.0))

        def add(impl: str, op: str, fn: Callable, bytes_moved: int, note: str = "") -> None:
            try:
                ms = time_fn(fn, iters, rounds)
            except Exception as exc:  # noqa: BLE001 - report and go on
                rows.append(Timing(shape, dtype_name, impl, op, math.nan, bytes_moved,
                                   note=f"failed: {type(exc).__name__}: {exc}"[:140]))
                return
            gbps = bytes_moved / ms / 1e6
            rows.append(Timing(shape, dtype_name, impl, op, ms, bytes_moved, gbps,
                               100 * gbps / copy_gbps, note=note))
            print(f"  {shape} {dtype_name} {impl:<14} {op:<18} {ms:9.4f} ms {gbps:8.0f} GB/s",
                  flush=True)

        pick = lambda k: inputs[k % len(inputs)]  # noqa: E731
        add("fastxent", "forward", lambda k: fx.cross_entropy(pick(k), labels), nc)
        add("fastxent", "fwd+bwd", lambda k: fx.cross_entropy_with_grad(pick(k), labels), 3 * nc)
        add("fastxent", "fwd+bwd out=logits",
            lambda k: fx.cross_entropy_with_grad(pick(k), labels, out=pick(k)), 3 * nc,
            "in place (overwrites the rotated inputs)")
        for impl, (forward, backward) in framework.items():
            add(impl, "forward", lambda k, f=forward: f(pick(k)), nc)
            add(impl, "fwd+bwd", lambda k, b=backward: b(pick(k)), 3 * nc)
        base = {r.operation: r.ms for r in rows if r.implementation == "torch eager"}
        for r in rows:
            ref_ms = base.get("forward" if r.operation == "forward" else "fwd+bwd")
            if ref_ms and r.ms == r.ms and r.implementation != "device copy":
                r.vs_eager = ref_ms / r.ms
        report.timings.extend(rows)
        del inputs
        if not simulator:
            import torch

            torch.cuda.empty_cache()


def linear_timing(report: Report, shapes, simulator: bool, rounds: int) -> None:
    """Stage 4: the fused linear cross-entropy, loss and all gradients."""
    import fastxent as fx

    time_fn = _timer(simulator)
    for dtype_name, n, d, c in shapes:
        shape = f"{n}x{d}x{c}"
        flops = 6 * n * d * c  # three products of 2 N D C
        rows: List[Timing] = []
        rng = np.random.default_rng(0)
        x = rng.normal(size=(n, d)).astype(dtype_name)
        W = (rng.normal(size=(c, d)) / math.sqrt(d)).astype(dtype_name)
        b = np.zeros(c, dtype_name)
        y = rng.integers(0, c, size=n)
        candidates: Dict[str, Callable] = {}
        from fastxent.cuda._numba_cuda import cuda

        nx, nW, nb, ny = (cuda.to_device(a) for a in (x, W, b, y))
        candidates["fastxent (numba arrays)"] = lambda: fx.linear_cross_entropy_with_grad(
            nx, nW, ny, bias=nb)
        torch = None
        if not simulator:
            import torch
            import torch.nn.functional as F

            import fastxent.torch as xt

            tx, tW, tb = (torch.from_numpy(a).cuda() for a in (x, W, b))
            ty = torch.from_numpy(y).cuda()
            candidates["fastxent (torch tensors)"] = lambda: fx.linear_cross_entropy_with_grad(
                tx, tW, ty, bias=tb)

            def autograd(loss_fn):
                def run():
                    leaves = [t.detach().requires_grad_(True) for t in (tx, tW, tb)]
                    return torch.autograd.grad(loss_fn(*leaves), leaves)
                return run

            candidates["fastxent.torch"] = autograd(
                lambda x_, W_, b_: xt.linear_cross_entropy(x_, W_, ty, linear_bias=b_))
            if hasattr(F, "linear_cross_entropy"):
                candidates["torch F.linear_cross_entropy"] = autograd(
                    lambda x_, W_, b_: F.linear_cross_entropy(x_, W_, ty, linear_bias=b_))
            candidates["torch unfused"] = autograd(
                lambda x_, W_, b_: F.cross_entropy(x_ @ W_.T + b_, ty))
        for impl, fn in candidates.items():
            peak = ""
            try:
                if torch is not None:
                    torch.cuda.synchronize()
                    torch.cuda.reset_peak_memory_stats()
                    base = torch.cuda.memory_allocated()
                    fn()
                    torch.cuda.synchronize()
                    peak = f", peak +{(torch.cuda.max_memory_allocated() - base) / 2**20:.0f} MiB"
                    if impl.endswith("(numba arrays)"):
                        peak = ""  # Numba's allocator: not seen by torch
                ms = time_fn(lambda k: fn(), 1 if simulator else 5, rounds)
            except Exception as exc:  # noqa: BLE001 - report and go on
                rows.append(Timing(shape, dtype_name, impl, "linear fwd+bwd", math.nan, 0,
                                   note=f"failed: {type(exc).__name__}: {exc}"[:140]))
                continue
            rows.append(Timing(shape, dtype_name, impl, "linear fwd+bwd", ms, 0,
                               note=f"{flops / ms / 1e9:.1f} TFLOP/s{peak}"))
            print(f"  {shape} {dtype_name} {impl:<28} {ms:9.3f} ms  {rows[-1].note}", flush=True)
        base = next((r.ms for r in rows if r.implementation == "torch F.linear_cross_entropy"),
                    next((r.ms for r in rows if r.implementation == "torch unfused"), None))
        for r in rows:
            if base and r.ms == r.ms:
                r.vs_eager = base / r.ms
        report.timings.extend(rows)


def _framework_candidates(torch, labels, use_compile: bool) -> Dict[str, tuple]:
    """implementation -> (forward(x), forward+backward(x)) of the baselines."""
    import torch.nn.functional as F

    def fwd_bwd(loss_fn):
        def run(x):
            leaf = x.detach().requires_grad_(True)
            return torch.autograd.grad(loss_fn(leaf, labels), leaf)
        return run

    eager = F.cross_entropy
    out = {"torch eager": (lambda x: eager(x, labels), fwd_bwd(eager))}
    if use_compile:
        try:
            compiled = torch.compile(eager)
            compiled(torch.randn(8, labels.max().item() + 1, device="cuda"), labels[:8])
            out["torch.compile"] = (lambda x: compiled(x, labels), fwd_bwd(compiled))
        except Exception as exc:  # noqa: BLE001
            print(f"  torch.compile unavailable: {exc}", flush=True)
    try:
        try:
            from liger_kernel.transformers.functional import liger_cross_entropy
        except ImportError:  # older layouts: the autograd Function itself
            from liger_kernel.ops.cross_entropy import LigerCrossEntropyFunction

            def liger_cross_entropy(x, y):
                result = LigerCrossEntropyFunction.apply(x, y)
                return result[0] if isinstance(result, tuple) else result

        out["liger-kernel"] = (lambda x: liger_cross_entropy(x, labels),
                               fwd_bwd(lambda x, y: liger_cross_entropy(x, y)))
    except Exception as exc:  # noqa: BLE001 - optional
        print(f"  Liger-Kernel unavailable: {type(exc).__name__}: {exc}", flush=True)
    return out


# ----------------------------------------------------------------- report
def markdown(report: Report) -> str:
    versions = ", ".join(f"{k} {v}" for k, v in report.versions.items())
    lines = [f"## Measured on {report.device}", "", f"{versions}.", "",
             f"Correctness sweep: {report.cases - report.wrong} of {report.cases} cases right "
             f"({report.wrong} wrong).", "", f"tests/test_cuda.py on the device: {report.tests}.", "",
             "Bandwidth counts one read of N x C for the forward pass and two reads plus one write "
             "for forward + backward (the copy: one read and one write); inputs rotate over "
             "several buffers; \"% copy\" relates it to the copy measured in the same run. "
             "The linear cross-entropy rows (\"linear fwd+bwd\") give TFLOP/s instead, and "
             "\"vs eager\" relates them to torch's F.linear_cross_entropy.", "",
             "| shape | dtype | implementation | operation | ms | GB/s | % copy | vs eager | note |",
             "|---|---|---|---|---:|---:|---:|---:|---|"]
    for t in report.timings:
        ms = "n/a" if t.ms != t.ms else f"{t.ms:.4f}"
        lines.append(f"| {t.shape} | {t.dtype} | {t.implementation} | {t.operation} | {ms} | "
                     f"{t.gbps:.0f} | {t.pct_copy:.0f}% | "
                     f"{f'{t.vs_eager:.2f}x' if t.vs_eager else ''} | {t.note} |")
    if report.sweep:
        lines += ["", "Wrong answers:", ""] + [f"- {s}" for s in report.sweep]
    return "\n".join(lines) + "\n"


def _versions(simulator: bool) -> Dict[str, str]:
    import numba

    import fastxent

    versions = {"fastxent": fastxent.__version__, "numba": numba.__version__,
                "python": platform.python_version()}
    try:
        from importlib.metadata import version

        versions["numba-cuda"] = version("numba-cuda")
    except Exception:  # noqa: BLE001
        pass
    if not simulator:
        import torch

        versions["torch"] = torch.__version__
        versions["CUDA (torch)"] = str(torch.version.cuda)
    return versions


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=".", help="folder for gpu_check.md and gpu_check.json")
    parser.add_argument("--simulator", action="store_true",
                        help="tiny shapes on Numba's CUDA simulator (a check of this script)")
    parser.add_argument("--skip", nargs="*", default=[],
                        choices=["sweep", "tests", "timing", "linear", "large"])
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--no-compile", action="store_true")
    args = parser.parse_args(argv)
    if args.simulator:
        os.environ.setdefault("NUMBA_ENABLE_CUDASIM", "1")
    sys.path.insert(0, ROOT)
    from fastxent.cuda import _numba_cuda

    if _numba_cuda.SIMULATED != args.simulator:
        print("the simulator is " + ("on" if _numba_cuda.SIMULATED else "off")
              + "; run with" + ("" if _numba_cuda.SIMULATED else "out") + " --simulator")
        return 2
    if args.simulator:
        device = "Numba's CUDA simulator (timings are host times of Python threads)"
    else:
        import torch

        props = torch.cuda.get_device_properties(0)
        device = (f"{props.name} ({props.total_memory / 2**30:.0f} GiB, "
                  f"{props.multi_processor_count} SMs)")
    report = Report(device=device, versions=_versions(args.simulator))
    print(f"device: {device}", flush=True)
    kinds = array_kinds(args.simulator)
    if "sweep" not in args.skip:
        print("== sweep (" + ", ".join(k.name for k in kinds) + ")", flush=True)
        sweep(report, kinds, args.simulator, large="large" not in args.skip)
        print(f"   {report.cases - report.wrong}/{report.cases} right", flush=True)
    if "tests" not in args.skip and not args.simulator:
        print("== tests/test_cuda.py on the device", flush=True)
        env = {k: v for k, v in os.environ.items() if k != "NUMBA_ENABLE_CUDASIM"}
        run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                              "tests/test_cuda.py"], cwd=ROOT, env=env, capture_output=True, text=True)
        report.tests = (run.stdout.strip().splitlines() or ["no output"])[-1]
        print(run.stdout[-3000:], run.stderr[-2000:], flush=True)
    if "timing" not in args.skip:
        print("== timing", flush=True)
        timing(report, SIMULATOR_SHAPES if args.simulator else TIMING_SHAPES, args.simulator,
               args.rounds or (2 if args.simulator else 7), not args.no_compile)
    if "linear" not in args.skip:
        print("== linear cross-entropy", flush=True)
        linear_timing(report, SIMULATOR_LINEAR_SHAPES if args.simulator else LINEAR_SHAPES,
                      args.simulator, args.rounds or (2 if args.simulator else 7))
    os.makedirs(args.out, exist_ok=True)
    text = markdown(report)
    with open(os.path.join(args.out, "gpu_check.md"), "w") as fh:
        fh.write(text)
    with open(os.path.join(args.out, "gpu_check.json"), "w") as fh:
        json.dump({**asdict(report), "timings": [asdict(t) for t in report.timings]}, fh, indent=1)
    print(text, flush=True)
    return 1 if report.wrong else 0


if __name__ == "__main__":
    sys.exit(main())
