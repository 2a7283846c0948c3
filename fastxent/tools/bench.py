"""``python -m fastxent bench``: fastxent against its NumPy reference, PyTorch
and JAX (when installed), measured side by side in one run.

Each (function, shape) cell times every implementation in interleaved rounds
(so that a noisy neighbour slows all of them alike) and reports the median.
The memory floor -- a copy of the logits on all threads, one read and one
write of N x C -- is timed in the same rounds.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional

import numpy as np
from numba import prange

import fastxent as fx
from fastxent import reference
from fastxent.cpu import _config
from fastxent.cpu._jit import kernel
from fastxent.cpu._fastmath import fast_exp_shifted, maxnum
from fastxent.cpu._rows import U
from fastxent.tools._harness import interleaved, parse_shapes

SHAPES = [(65536, 10), (4096, 1000), (1024, 32000), (256, 128000)]
QUICK_SHAPE = (4096, 1000)


# ------------------------------------------------------------------ inputs
def _logits(rng, n, c, dtype):
    return (rng.standard_normal((n, c)) * 3).astype(dtype)


def _probs(rng, n, c, dtype):
    p = rng.random((n, c)) + 1e-3
    return (p / p.sum(-1, keepdims=True)).astype(dtype)


def _inputs(kind: str, rng, n: int, c: int, dtype) -> tuple:
    """Positional arguments for a function family."""
    if kind == "rows":
        return (_logits(rng, n, c, dtype),)
    if kind == "labels":
        return _logits(rng, n, c, dtype), rng.integers(0, c, n)
    if kind == "binary_probs":
        return rng.uniform(0.01, 0.99, (n, c)).astype(dtype), (rng.random((n, c)) < 0.5).astype(dtype)
    if kind == "binary_logits":
        return _logits(rng, n, c, dtype), (rng.random((n, c)) < 0.5).astype(dtype)
    if kind == "one_dist":
        return (_probs(rng, n, c, dtype),)
    if kind == "two_dists":
        return _probs(rng, n, c, dtype), _probs(rng, n, c, dtype)
    if kind == "soft_targets":
        return _logits(rng, n, c, dtype), _probs(rng, n, c, dtype)
    raise ValueError(kind)


# Options of the cross-entropy, timed as "<function>[<option>]" against the
# plain hard-label call: what each option costs.
VARIANTS: Dict[str, str] = {
    "soft targets": "soft_targets",
    "label_smoothing": "labels",
    "weight": "labels",
}


def _split(name: str) -> tuple:
    """"cross_entropy[weight]" -> ("cross_entropy", "weight"); "softmax" -> ("softmax", "")."""
    base, _, option = name.partition("[")
    return base, option.rstrip("]")


def _input_kind(name: str) -> str:
    base, option = _split(name)
    return VARIANTS[option] if option else FUNCTIONS[base]


def _options(name: str, c: int, dtype) -> dict:
    """Keyword arguments of a variant (the same for every implementation)."""
    option = _split(name)[1]
    if option == "label_smoothing":
        return {"label_smoothing": 0.1}
    if option == "weight":
        return {"weight": np.linspace(0.5, 2.0, c).astype(dtype)}
    return {}


# Every public function, with the family of inputs it takes.
FUNCTIONS: Dict[str, str] = {
    "logsumexp": "rows",
    "softmax": "rows",
    "log_softmax": "rows",
    "cross_entropy": "labels",
    "cross_entropy_with_grad": "labels",
    "binary_cross_entropy": "binary_probs",
    "binary_cross_entropy_with_grad": "binary_probs",
    "binary_cross_entropy_with_logits": "binary_logits",
    "binary_cross_entropy_with_logits_with_grad": "binary_logits",
    "entropy": "one_dist",
    "entropy_with_grad": "one_dist",
    "kl_divergence": "two_dists",
    "kl_divergence_with_grad": "two_dists",
    "cross_entropy_probs": "two_dists",
    "cross_entropy_probs_with_grad": "two_dists",
}
FULL_FUNCTIONS = ["logsumexp", "softmax", "log_softmax", "cross_entropy", "cross_entropy_with_grad"]
VARIANT_FUNCTIONS = [f"{base}[{option}]" for base in ("cross_entropy", "cross_entropy_with_grad")
                     for option in VARIANTS]


def _scipy_impls(name: str, args: tuple) -> Dict[str, Callable[[], object]]:
    try:
        import scipy.special as sp
    except ImportError:
        return {}
    fns = {"logsumexp": sp.logsumexp, "softmax": sp.softmax, "log_softmax": sp.log_softmax}
    if name not in fns:
        return {}
    return {"scipy": lambda: fns[name](args[0], axis=-1)}


# ------------------------------------------------------------------- peers
def _torch_impls(name: str, args: tuple, options: dict) -> Dict[str, Callable[[], object]]:
    try:
        import torch
        import torch.nn.functional as F
    except ImportError:
        return {}
    t = [torch.from_numpy(np.ascontiguousarray(a)) for a in args]
    kw = {k: torch.from_numpy(v) if isinstance(v, np.ndarray) else v for k, v in options.items()}
    if name == "logsumexp":
        return {"torch": lambda: torch.logsumexp(t[0], -1)}
    if name == "softmax":
        return {"torch": lambda: torch.softmax(t[0], -1)}
    if name == "log_softmax":
        return {"torch": lambda: torch.log_softmax(t[0], -1)}
    if name == "cross_entropy":
        return {"torch": lambda: F.cross_entropy(t[0], t[1], **kw)}
    if name == "cross_entropy_with_grad":
        def fwd_bwd():
            x = t[0].detach().requires_grad_(True)
            F.cross_entropy(x, t[1], **kw).backward()
            return x.grad
        # the forward alone too: small fused calls should cost at most 1.5x it
        return {"torch": fwd_bwd, "torch fwd": lambda: F.cross_entropy(t[0], t[1], **kw)}
    return {}


def _jax_impls(name: str, args: tuple, options: dict) -> Dict[str, Callable[[], object]]:
    try:
        import jax
        import jax.numpy as jnp
    except ImportError:
        return {}
    if args[0].dtype == np.float64:
        jax.config.update("jax_enable_x64", True)
    a = [jnp.asarray(v) for v in args]
    eps = options.get("label_smoothing", 0.0)
    weight = jnp.asarray(options["weight"]) if "weight" in options else None

    def ce(x, target):
        """The mean cross-entropy with the same options as fastxent's call."""
        lse = jax.nn.logsumexp(x, axis=-1)
        if target.ndim == 2:  # soft targets
            return jnp.mean(lse - jnp.sum(target * x, axis=-1))
        picked = jnp.take_along_axis(x, target[:, None], axis=-1)[:, 0]
        if weight is not None:
            w = weight[target]
            return jnp.sum(w * (lse - picked)) / jnp.sum(w)
        loss = lse - picked
        if eps:
            loss = (1.0 - eps) * loss + eps * (lse - jnp.mean(x, axis=-1))
        return jnp.mean(loss)

    fns = {
        "logsumexp": lambda x: jax.nn.logsumexp(x, axis=-1),
        "softmax": lambda x: jax.nn.softmax(x, axis=-1),
        "log_softmax": lambda x: jax.nn.log_softmax(x, axis=-1),
        "cross_entropy": ce,
        "cross_entropy_with_grad": jax.value_and_grad(ce),
    }
    if name not in fns:
        return {}
    jitted = jax.jit(fns[name])
    return {"jax": lambda: jax.block_until_ready(jitted(*a))}


# ----------------------------------------------------------------- floors
@kernel
def _exp_pass(x, out):
    """out = exp(x), flat, all threads: the cost of the exponentials alone
    (what a kernel that must exponentiate every element cannot beat)."""
    flat_x = x.reshape(x.size)
    flat_out = out.reshape(out.size)
    block = 1 << 14
    for task in prange((flat_x.shape[0] + block - 1) // block):
        for k in range(U(task * block), U(min(task * block + block, flat_x.shape[0]))):
            flat_out[k] = fast_exp_shifted(flat_x[k])


@kernel
def _copy_pass(x, out):
    """out = x, flat, all threads: one read and one write of x, the memory
    floor of a kernel that writes N x C.  (Not ``np.copyto``: that copies on
    one thread, which is half the floor of an all-thread kernel where each
    core has its own share of the bandwidth -- as on a 2-core Intel Xeon
    slice, 14 against 28 GB/s.)"""
    flat_x = x.reshape(x.size)
    flat_out = out.reshape(out.size)
    block = 1 << 14
    for task in prange((flat_x.shape[0] + block - 1) // block):
        for k in range(U(task * block), U(min(task * block + block, flat_x.shape[0]))):
            flat_out[k] = flat_x[k]


@kernel
def _read_pass(x, out):
    """out[task] = max of a block of x, all threads: one read of x, the floor
    of a forward that reads the logits once and writes little."""
    flat_x = x.reshape(x.size)
    block = 1 << 14
    for task in prange((flat_x.shape[0] + block - 1) // block):
        m = flat_x.dtype.type(-np.inf)
        for k in range(U(task * block), U(min(task * block + block, flat_x.shape[0]))):
            m = maxnum(m, flat_x[k])
        out[task] = m


# ----------------------------------------------------------------- timing
@dataclass
class Cell:
    function: str
    shape: tuple
    dtype: str
    seconds: Dict[str, float] = field(default_factory=dict)

    def ratio(self, peer: str) -> Optional[float]:
        """peer time / fastxent time (> 1: fastxent is faster)."""
        if peer not in self.seconds or "fastxent" not in self.seconds:
            return None
        return self.seconds[peer] / self.seconds["fastxent"]


def measure(name: str, shape: tuple, dtype, rounds: int, peers: bool, seed: int = 0) -> Cell:
    """Median seconds of each implementation of ``name`` at ``shape``, interleaved."""
    n, c = shape
    rng = np.random.default_rng(seed)
    base = _split(name)[0]
    args = _inputs(_input_kind(name), rng, n, c, dtype)
    options = _options(name, c, dtype)
    impls: Dict[str, Callable[[], object]] = {
        "fastxent": lambda: getattr(fx, base)(*args, **options),
        "numpy": lambda: getattr(reference, base)(*args, **options),
    }
    if options or _split(name)[1]:
        # the plain hard-label call on the same logits, timed in the same rounds
        labels = rng.integers(0, c, n)
        impls["hard labels"] = lambda: getattr(fx, base)(args[0], labels)
    impls.update(_scipy_impls(base, args))
    if peers:
        impls.update(_torch_impls(base, args, options))
        impls.update(_jax_impls(base, args, options))
    copy_dst = np.empty_like(args[0])
    impls["copy floor"] = lambda: _copy_pass(args[0].size, args[0], copy_dst)
    if args[0].dtype in (np.float32, np.float64):
        impls["exp floor"] = lambda: _exp_pass(args[0].size, args[0], copy_dst)
        maxima = np.empty((args[0].size + (1 << 14) - 1) >> 14, dtype=args[0].dtype)
        impls["read floor"] = lambda: _read_pass(args[0].size, args[0], maxima)
    # A round is at least ~20 ms of work per implementation, whatever the shape.
    seconds = interleaved(impls, rounds, round_seconds=0.02)
    return Cell(name, shape, np.dtype(dtype).name, seconds)


# ----------------------------------------------------------------- machine
# ISA extensions worth naming in a header, LLVM's feature names -> shown as
_ISA_NAMES = [("avx2", "AVX2"), ("fma", "FMA"), ("avx512f", "AVX-512F"), ("avx512dq", "DQ"),
              ("avx512bw", "BW"), ("avx512vl", "VL"), ("avx512bf16", "BF16"),
              ("avx512fp16", "FP16"), ("avx512vnni", "VNNI"), ("amx-tile", "AMX")]


def _cpu_model() -> str:
    """The CPU's marketing name (Linux /proc/cpuinfo), else what platform says."""
    fields = {}
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                key, _, value = line.partition(":")
                fields.setdefault(key.strip(), value.strip())
                if not line.strip():
                    break  # the first processor is enough
    except OSError:
        pass
    if "model name" not in fields:
        return platform.processor() or platform.machine()
    family = f" (family {fields['cpu family']}, model {fields.get('model', '?')})" \
        if "cpu family" in fields else ""
    return fields["model name"] + family


def machine() -> dict:
    """What the figures were measured on: CPU model, LLVM's name for it, the
    ISA extensions Numba compiles for, the kernels' vector width, threads."""
    import numba

    llvm_cpu, features = _config.target_cpu()
    width = _config.vector_width()
    threads = {"numba": numba.get_num_threads(), "cores": os.cpu_count()}
    if "torch" in sys.modules:
        threads["torch"] = sys.modules["torch"].get_num_threads()
    try:
        layer = numba.threading_layer()
    except ValueError:  # no parallel launch yet
        layer = None
    versions = {m: getattr(sys.modules[m], "__version__", "?")
                for m in ("numba", "numpy", "torch", "jax") if m in sys.modules}
    return {"cpu_model": _cpu_model(), "llvm_cpu": llvm_cpu,
            "isa": [shown for flag, shown in _ISA_NAMES if flag in features],
            "avx2": "avx2" in features, "avx512": _config.AVX512_FEATURES <= features,
            "vector_width_bits": width if width else f"LLVM default for {llvm_cpu}",
            "threads": threads, "threading_layer": layer, "platform": platform.platform(),
            "python": platform.python_version(), "versions": versions}


def format_machine(info: dict) -> str:
    """One line naming the machine, for the table's header."""
    threads = ", ".join(f"{k} {v}" for k, v in info["threads"].items())
    return (f"{info['cpu_model']} (LLVM {info['llvm_cpu']}); {' '.join(info['isa']) or 'no AVX2'}; "
            f"vector width {info['vector_width_bits']}; threads: {threads}")


# ----------------------------------------------------------------- output
# the columns "x vs <peer>"; "torch fwd" is PyTorch's forward alone beside a fused with-grad call
PEERS = ("numpy", "scipy", "torch", "torch fwd", "jax")


def _fmt_time(s: float) -> str:
    return f"{s * 1e6:8.1f} us" if s < 1e-3 else f"{s * 1e3:8.2f} ms"


def format_table(cells: List[Cell]) -> str:
    peers = [p for p in PEERS if any(p in c.seconds for c in cells)]
    variants = any("hard labels" in c.seconds for c in cells)
    head = f"{'function':<44}{'shape':>14} {'dtype':>8} {'fastxent':>12}" + "".join(
        f"{'x vs ' + p:>12}" for p in peers) + f"{'x copy':>9}{'x read':>8}{'x exp':>8}"
    head += f"{'cost':>8}" if variants else ""
    lines = [head, "-" * len(head)]
    for c in cells:
        row = f"{c.function:<44}{'%dx%d' % c.shape:>14} {c.dtype:>8} {_fmt_time(c.seconds['fastxent']):>12}"
        for p in peers:
            r = c.ratio(p)
            row += f"{'%.2fx' % r if r else '-':>12}"
        row += f"{c.seconds['fastxent'] / c.seconds['copy floor']:>8.2f}x"
        row += f"{c.seconds['fastxent'] / c.seconds['read floor']:>7.2f}x" if "read floor" in c.seconds else "       -"
        row += f"{c.seconds['fastxent'] / c.seconds['exp floor']:>7.2f}x" if "exp floor" in c.seconds else "       -"
        if variants:
            hard = c.seconds.get("hard labels")
            row += f"{c.seconds['fastxent'] / hard:>7.2f}x" if hard else "       -"
        lines.append(row)
    lines.append("")
    lines.append("'x vs peer' = peer time / fastxent time (higher is better for fastxent); "
                 "'x copy' = fastxent time / an all-thread copy of the input (one read + one write: the memory floor);\n"
                 "'x read' = fastxent time / one read of the input (a max over it, all threads);\n"
                 "'x exp' = fastxent time / one vectorised exp over the input into a buffer (the exp-throughput floor)."
                 + ("\n'cost' = fastxent time with the option / fastxent time of the plain hard-label call, "
                    "same logits, same rounds." if variants else ""))
    return "\n".join(lines)


def format_markdown(cells: List[Cell]) -> str:
    """The table of :func:`format_table` as Markdown (for docs/performance.md)."""
    peers = [p for p in PEERS if any(p in c.seconds for c in cells)]
    variants = any("hard labels" in c.seconds for c in cells)
    head = ["function", "N x C", "dtype", "fastxent"] + [f"x vs {p}" for p in peers] + ["x copy", "x read", "x exp"]
    head += ["cost"] if variants else []
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for c in cells:
        row = [f"`{c.function}`", "%d x %d" % c.shape, c.dtype, _fmt_time(c.seconds["fastxent"]).strip()]
        row += ["%.2f" % c.ratio(p) if c.ratio(p) else "-" for p in peers]
        row.append("%.2f" % (c.seconds["fastxent"] / c.seconds["copy floor"]))
        row.append("%.2f" % (c.seconds["fastxent"] / c.seconds["read floor"]) if "read floor" in c.seconds else "-")
        row.append("%.2f" % (c.seconds["fastxent"] / c.seconds["exp floor"]) if "exp floor" in c.seconds else "-")
        if variants:
            hard = c.seconds.get("hard labels")
            row.append("%.2f" % (c.seconds["fastxent"] / hard) if hard else "-")
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


def plot(cells: List[Cell], path: str) -> None:
    """Time against class count for each implementation, with the copy floor."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [n for n in ("cross_entropy", "cross_entropy_with_grad", "logsumexp", "softmax")
             if any(c.function == n for c in cells)]
    fig, axes = plt.subplots(1, len(names), figsize=(5 * len(names), 4.2), squeeze=False)
    styles = {"fastxent": "o-", "numpy": "s--", "scipy": "d--", "torch": "^-.", "jax": "v:",
              "copy floor": "k-"}
    for ax, name in zip(axes[0], names):
        mine = sorted((c for c in cells if c.function == name and c.dtype == "float32"),
                      key=lambda c: c.shape[1])
        for impl, style in styles.items():
            pts = [(c.shape[1], c.seconds[impl] / (c.shape[0] * c.shape[1]) * 1e9)
                   for c in mine if impl in c.seconds]
            if pts:
                xs, ys = zip(*pts)
                ax.plot(xs, ys, style, label=impl, lw=2 if impl == "fastxent" else 1)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("classes C (N x C ~ 0.3-33M elements)")
        ax.set_ylabel("ns per element")
        ax.set_title(f"{name}, float32")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    info = machine()
    fig.suptitle(f"fastxent on {info['cpu_model']} ({info['llvm_cpu']}, "
                 f"{' '.join(info['isa'][:3])}), {info['threads']['numba']} threads "
                 "(lower is better)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def run(functions: List[str], shapes: List[tuple], dtypes: List, rounds: int, peers: bool,
        log=None) -> List[Cell]:
    log = log or sys.stderr
    jobs = [(f, s, d) for d in dtypes for s in shapes for f in functions]
    cells = []
    for k, (f, s, d) in enumerate(jobs, 1):
        print(f"[{k:>3}/{len(jobs)}] {f} {s[0]}x{s[1]} {np.dtype(d).name} ...", file=log, flush=True)
        cells.append(measure(f, s, d, rounds, peers))
    return cells


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fastxent bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help=f"every public function at one shape {QUICK_SHAPE}, float32, few rounds")
    parser.add_argument("--functions", nargs="+", choices=sorted(FUNCTIONS) + VARIANT_FUNCTIONS,
                        metavar="FUNCTION", help="functions to time: any public loss or softmax "
                        "function, or a cross-entropy option such as 'cross_entropy_with_grad[weight]'")
    parser.add_argument("--variants", action="store_true",
                        help="time the cross-entropy options (soft targets, label_smoothing, weight) "
                             "against the plain hard-label call")
    parser.add_argument("--shapes", nargs="+", metavar="NxC", help="shapes to time, e.g. 4096x1000")
    parser.add_argument("--dtype", nargs="+", default=["float32"], choices=["float32", "float64"])
    parser.add_argument("--rounds", type=int, default=None, help="interleaved rounds per cell")
    parser.add_argument("--no-peers", action="store_true", help="skip PyTorch and JAX")
    parser.add_argument("--json", metavar="FILE", help="write the measurements as JSON")
    parser.add_argument("--plot", metavar="FILE.png", help="plot time per element against C")
    parser.add_argument("--markdown", metavar="FILE.md", help="write the table as Markdown")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    argv = sys.argv[1:] if argv is None else list(argv)
    if "--device" in argv and argv[argv.index("--device") + 1:][:1] == ["cuda"]:
        # the GPU benchmark has options of its own: hand it everything else
        from fastxent.tools import bench_cuda as cuda_bench

        k = argv.index("--device")
        return cuda_bench.main(argv[:k] + argv[k + 2:])
    args = parser.parse_args(argv)
    if args.quick:
        functions = args.functions or list(FUNCTIONS)
        shapes, rounds = [QUICK_SHAPE], args.rounds or 5
    elif args.variants:
        functions = args.functions or VARIANT_FUNCTIONS
        shapes, rounds = SHAPES, args.rounds or 9
    else:
        functions = args.functions or FULL_FUNCTIONS
        shapes, rounds = SHAPES, args.rounds or 9
    if args.shapes:
        shapes = parse_shapes(parser, args.shapes)
    cells = run(functions, shapes, [np.dtype(d) for d in args.dtype], rounds, not args.no_peers)
    info = machine()  # after the run: the thread counts and layer actually used
    print(format_machine(info))
    print(format_table(cells))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"machine": info, "cells": [c.__dict__ for c in cells]}, fh, indent=1)
        print(f"wrote {args.json}", file=sys.stderr)
    if args.markdown:
        with open(args.markdown, "w") as fh:
            fh.write(format_markdown(cells) + f"\nMeasured on: {format_machine(info)}\n")
        print(f"wrote {args.markdown}", file=sys.stderr)
    if args.plot:
        plot(cells, args.plot)
        print(f"wrote {args.plot}", file=sys.stderr)
    return 0
