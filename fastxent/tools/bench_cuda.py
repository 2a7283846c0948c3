"""GPU benchmark: fastxent's CUDA kernels against PyTorch, with CUDA events.

    python -m fastxent bench --device cuda [--quick] [--markdown docs/gpu.md]
    python -m fastxent.tools.bench_cuda --shapes 8192x32000 65536x10 --json out.json

For each shape (default: 8192x32000 and 16384x131072 in float32 -- LLM
vocabularies -- and 65536x10), on PyTorch CUDA tensors:

1. correctness: fastxent's per-row losses and gradient rows against the CPU
   reference (``fastxent.reference`` in float64) on a sample of rows, and
   its mean loss against ``torch.nn.functional.cross_entropy``;
2. time per call (median over rounds of CUDA-event-timed loops) of
   * fastxent ``cross_entropy`` (forward, mean) and ``cross_entropy_with_grad``
     (fused loss + gradient, gradient allocated, and in place with
     ``out=logits``),
   * PyTorch eager ``F.cross_entropy`` forward, and forward + backward
     (``torch.autograd.grad``),
   * the same through ``torch.compile``, when it works here,
   * a device-to-device copy of the logits (``dst.copy_(src)``), whose
     bandwidth is the yardstick;
3. achieved bandwidth: forward counts one read of N x C, the fused gradient
   two reads and one write; "% copy" relates it to the copy's bandwidth
   (read + write) measured in the same run.

Goals (issue 7, on an H100/H200): fused >= 80% and forward >= 85% of the copy
bandwidth; >= 2x faster than PyTorch eager forward+backward at the large
shapes; never slower than PyTorch at 65536x10.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import sys
from dataclasses import asdict, dataclass, field
from typing import Callable, List, Optional

import numpy as np

from fastxent.tools._harness import parse_shapes

DEFAULT_SHAPES = [(8192, 32000), (16384, 131072), (65536, 10)]
QUICK_SHAPES = [(1024, 32000), (65536, 10)]
CHECK_ROWS = 64  # rows compared with the CPU reference


@dataclass
class Row:
    shape: str
    dtype: str
    implementation: str
    operation: str
    ms: float
    bytes_moved: int
    gbps: float = 0.0
    pct_copy: float = 0.0
    vs_torch_eager: float = 0.0
    note: str = ""


@dataclass
class Report:
    device: str
    versions: dict
    copy_gbps: dict = field(default_factory=dict)
    checks: List[str] = field(default_factory=list)
    rows: List[Row] = field(default_factory=list)


def _unavailable(message: str) -> int:
    print(f"fastxent GPU benchmark: {message}", file=sys.stderr)
    return 2


def _environment():
    """(torch, fastxent, api) or a reason string when no GPU can be used."""
    try:
        import torch
    except ImportError:
        return "PyTorch is not installed (the benchmark compares against it): pip install torch"
    if not torch.cuda.is_available():
        return "no CUDA GPU is visible to PyTorch (torch.cuda.is_available() is False)"
    try:
        from fastxent.cuda import _numba_cuda
    except ImportError as exc:
        return f"fastxent's CUDA kernels cannot be loaded: {exc}"
    if _numba_cuda.SIMULATED:
        return "NUMBA_ENABLE_CUDASIM is set: the CUDA simulator cannot be timed; unset it"
    import fastxent

    return torch, fastxent


def _time(torch, fn: Callable[[], object], iters: int, rounds: int) -> float:
    """Median milliseconds per call of ``fn`` on the current stream."""
    for _ in range(2):
        fn()
    torch.cuda.synchronize()
    samples = []
    for _ in range(rounds):
        start = torch.cuda.Event(enable_timing=True)
        end = torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(iters):
            fn()
        end.record()
        end.synchronize()
        samples.append(start.elapsed_time(end) / iters)
    return statistics.median(samples)


def _iterations(n_elements: int) -> int:
    return int(min(200, max(3, 2e9 // max(n_elements, 1))))


def _check(torch, fx, logits, labels, report: Report, label: str) -> None:
    """Per-row losses and gradient rows against the CPU reference (float64)
    on a sample of rows; the mean against PyTorch."""
    import torch.nn.functional as F

    from fastxent import reference

    n = logits.shape[0]
    rows = torch.linspace(0, n - 1, min(CHECK_ROWS, n), device=logits.device).long()
    losses, grad = fx.cross_entropy_with_grad(logits, labels, reduction="none")
    x = logits[rows].double().cpu().numpy()
    y = labels[rows].cpu().numpy()
    ref_loss, ref_grad = reference.cross_entropy_with_grad(x, y, reduction="none")
    tol = {torch.float16: 2e-3, torch.float32: 1e-5}.get(logits.dtype, 1e-10)
    loss_err = float(np.max(np.abs(losses[rows].double().cpu().numpy() - ref_loss) / np.maximum(np.abs(ref_loss), 1e-30)))
    grad_err = float(np.max(np.abs(grad[rows].double().cpu().numpy() - ref_grad)))
    mean = float(fx.cross_entropy(logits, labels))
    torch_mean = float(F.cross_entropy(logits.float(), labels))
    mean_err = abs(mean - torch_mean) / abs(torch_mean)
    ok = loss_err <= tol and grad_err <= tol and mean_err <= tol
    line = (f"{label}: {'ok' if ok else 'MISMATCH'} -- per-row loss rel. error {loss_err:.2e}, "
            f"gradient abs. error {grad_err:.2e} ({len(rows)} rows vs the CPU reference), "
            f"mean vs PyTorch rel. error {mean_err:.2e} (tolerance {tol:g})")
    report.checks.append(line)
    print(line, flush=True)
    if not ok:
        raise SystemExit(f"correctness check failed: {line}")


def bench_shape(torch, fx, report: Report, n: int, c: int, dtype, rounds: int,
                compile_torch: bool) -> None:
    import torch.nn.functional as F

    device = torch.device("cuda")
    itemsize = torch.tensor([], dtype=dtype).element_size()
    need = 3 * n * c * itemsize + (1 << 30)
    free, _ = torch.cuda.mem_get_info()
    shape = f"{n}x{c}"
    dname = str(dtype).replace("torch.", "")
    if need > free:
        report.checks.append(f"{shape} {dname}: skipped, needs ~{need / 2**30:.1f} GiB, {free / 2**30:.1f} free")
        print(report.checks[-1], flush=True)
        return
    gen = torch.Generator(device=device).manual_seed(0)
    logits = torch.randn(n, c, device=device, dtype=dtype, generator=gen) * 4
    labels = torch.randint(0, c, (n,), device=device, generator=gen)
    _check(torch, fx, logits, labels, report, f"{shape} {dname}")

    iters = _iterations(n * c)
    nc_bytes = n * c * itemsize
    dst = torch.empty_like(logits)
    t_copy = _time(torch, lambda: dst.copy_(logits), iters, rounds)
    copy_gbps = 2 * nc_bytes / t_copy / 1e6
    report.copy_gbps[shape] = copy_gbps
    del dst

    results = []

    def add(impl, op, fn, bytes_moved, note=""):
        try:
            ms = _time(torch, fn, iters, rounds)
        except Exception as exc:  # noqa: BLE001 - report and go on
            results.append(Row(shape, dname, impl, op, math.nan, bytes_moved, note=f"failed: {exc}"[:120]))
            return
        gbps = bytes_moved / ms / 1e6
        results.append(Row(shape, dname, impl, op, ms, bytes_moved, gbps, 100 * gbps / copy_gbps, note=note))
        print(f"  {impl:<16} {op:<22} {ms:9.3f} ms  {gbps:8.1f} GB/s", flush=True)

    results.append(Row(shape, dname, "device copy", "dst.copy_(src)", t_copy, 2 * nc_bytes,
                       copy_gbps, 100.0))
    add("fastxent", "forward", lambda: fx.cross_entropy(logits, labels), nc_bytes)
    add("fastxent", "loss+grad", lambda: fx.cross_entropy_with_grad(logits, labels), 3 * nc_bytes)
    work = logits.clone()
    add("fastxent", "loss+grad in place", lambda: fx.cross_entropy_with_grad(work, labels, out=work),
        3 * nc_bytes, "overwrites its input each call")
    del work

    add("torch eager", "forward", lambda: F.cross_entropy(logits, labels), nc_bytes)
    leaf = logits.detach().requires_grad_(True)

    def eager_fwd_bwd():
        loss = F.cross_entropy(leaf, labels)
        return torch.autograd.grad(loss, leaf)

    add("torch eager", "forward+backward", eager_fwd_bwd, 3 * nc_bytes)
    if compile_torch:
        try:
            compiled = torch.compile(lambda a, b: F.cross_entropy(a, b))

            def compiled_fwd_bwd():
                loss = compiled(leaf, labels)
                return torch.autograd.grad(loss, leaf)

            compiled(logits, labels)
            compiled_fwd_bwd()
            add("torch.compile", "forward", lambda: compiled(logits, labels), nc_bytes)
            add("torch.compile", "forward+backward", compiled_fwd_bwd, 3 * nc_bytes)
        except Exception as exc:  # noqa: BLE001 - torch.compile is optional
            results.append(Row(shape, dname, "torch.compile", "-", math.nan, 0,
                               note=f"unavailable: {type(exc).__name__}: {exc}"[:160]))
    eager = {r.operation: r.ms for r in results if r.implementation == "torch eager"}
    for r in results:
        base = eager.get("forward" if r.operation == "forward" else "forward+backward")
        if r.implementation != "device copy" and base and r.ms == r.ms:
            r.vs_torch_eager = base / r.ms
    report.rows.extend(results)
    del logits, labels, leaf
    torch.cuda.empty_cache()


def format_table(report: Report) -> str:
    head = ("| shape | dtype | implementation | operation | ms | GB/s | % of copy | speed-up vs eager | note |\n"
            "|---|---|---|---|---:|---:|---:|---:|---|")
    lines = [head]
    for r in report.rows:
        ms = "n/a" if r.ms != r.ms else f"{r.ms:.3f}"
        gbps = f"{r.gbps:.0f}" if r.gbps else ""
        pct = f"{r.pct_copy:.0f}%" if r.pct_copy else ""
        vs = f"{r.vs_torch_eager:.2f}x" if r.vs_torch_eager else ""
        lines.append(f"| {r.shape} | {r.dtype} | {r.implementation} | {r.operation} | {ms} | {gbps} | {pct} | {vs} | {r.note} |")
    return "\n".join(lines)


def markdown(report: Report) -> str:
    versions = ", ".join(f"{k} {v}" for k, v in report.versions.items())
    checks = "\n".join(f"- {c}" for c in report.checks)
    return (f"## Measured on {report.device}\n\n{versions}.\n\n"
            "Bandwidth counts one read of N x C for the forward pass and two reads plus one "
            "write for loss + gradient (the copy: one read, one write); \"% of copy\" relates it "
            "to the device-to-device copy measured in the same run.\n\n"
            f"Correctness (before timing):\n\n{checks}\n\n{format_table(report)}\n")


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fastxent bench --device cuda",
                                     description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help=f"shapes {QUICK_SHAPES}, fewer rounds")
    parser.add_argument("--shapes", nargs="+", metavar="NxC", help="shapes, e.g. 8192x32000")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float16", "float64"])
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--no-compile", action="store_true", help="skip torch.compile")
    parser.add_argument("--no-shuffle", action="store_true",
                        help="reduce through shared memory only (the simulator's path)")
    parser.add_argument("--json", metavar="FILE", help="write the measurements as JSON")
    parser.add_argument("--markdown", metavar="FILE", help="append the report as markdown (docs/gpu.md)")
    args = parser.parse_args(argv)
    if args.shapes:
        shapes = parse_shapes(parser, args.shapes, example="8192x32000")
    else:
        shapes = QUICK_SHAPES if args.quick else DEFAULT_SHAPES
    rounds = args.rounds or (3 if args.quick else 7)

    env = _environment()
    if isinstance(env, str):
        return _unavailable(env)
    torch, fx = env
    from fastxent.cuda import _config

    if args.no_shuffle:
        _config.USE_SHUFFLE = False
    import numba

    props = torch.cuda.get_device_properties(0)
    report = Report(device=f"{props.name} ({props.total_memory / 2**30:.0f} GiB, "
                           f"{props.multi_processor_count} SMs)",
                    versions={"fastxent": fx.__version__, "torch": torch.__version__,
                              "numba": numba.__version__, "CUDA (torch)": torch.version.cuda,
                              "python": platform.python_version()})
    try:
        import numba_cuda  # noqa: F401

        report.versions["numba-cuda"] = getattr(numba_cuda, "__version__", "?")
    except ImportError:
        pass
    print(f"device: {report.device}", flush=True)
    dtype = getattr(torch, args.dtype)
    for n, c in shapes:
        print(f"{n}x{c} {args.dtype}:", flush=True)
        bench_shape(torch, fx, report, n, c, dtype, rounds, not args.no_compile)
    print(format_table(report))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({**asdict(report), "rows": [asdict(r) for r in report.rows]}, fh, indent=1)
        print(f"wrote {args.json}", file=sys.stderr)
    if args.markdown:
        with open(args.markdown, "a") as fh:
            fh.write("\n" + markdown(report))
        print(f"appended to {args.markdown}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
