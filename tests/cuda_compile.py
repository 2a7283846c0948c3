"""Compile every fastxent CUDA kernel to PTX (and, with ptxas, to SASS) for a
real GPU architecture, without a GPU: a check of what the simulator cannot
see (typing in the CUDA target, float16 casts, warp shuffles, register use).

Needs numba-cuda with NVVM (``pip install 'numba-cuda[cu12]'``), no driver:

    python tests/cuda_compile.py [--cc 9.0] [--ptxas] [--dump DIR]

Prints one line per kernel specialisation (PTX size, float64 instructions in
it, registers and spills when --ptxas finds ptxas) and exits non-zero if any
fails to compile.
"""

import argparse
import glob
import os
import re
import shutil
import subprocess
import sys
import tempfile



def main(argv=None):
    # before numba is imported: no simulator, and no GPU needed
    os.environ["FASTXENT_CUDA_COMPILE_ONLY"] = "1"
    os.environ.pop("NUMBA_ENABLE_CUDASIM", None)
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cc", default="9.0", help="compute capability, e.g. 9.0 (H100/H200)")
    parser.add_argument("--ptxas", action="store_true", help="assemble with ptxas -v (registers, spills)")
    parser.add_argument("--dump", help="write the PTX files to this folder")
    parser.add_argument("--maxrregcount", type=int, default=None,
                        help="ptxas register limit (default: the kernel's max_registers)")
    args = parser.parse_args(argv)
    cc = tuple(int(v) for v in args.cc.split("."))

    from numba import cuda

    try:
        import numba.cuda.dispatcher as dispatcher
    except ImportError:  # pragma: no cover
        dispatcher = None

    class _Device:  # device functions compile for "the current device": make it cc
        compute_capability = cc

    if dispatcher is not None and hasattr(dispatcher, "get_current_device"):
        dispatcher.get_current_device = lambda: _Device()
    try:
        from numba.cuda import types
    except ImportError:  # the CUDA target built into numba
        from numba.core import types

    from fastxent.cuda import _arrays, binary, divergence, softmax, xent

    none, b, i64, f64 = types.none, types.boolean, types.int64, types.float64

    def arr(dt, nd=1):
        return types.Array(dt, nd, "C")

    jobs = []
    for f in (types.float32, types.float64):
        tag = str(f)
        m2, v1 = arr(f, 2), arr(f, 1)
        jobs.append((f"softmax_rows[{tag}]", softmax.softmax_rows,
                     (m2, m2, i64, i64, b)))
        for w in (none, v1):
            jobs.append((f"scan_labels[{tag}, weight={w}]", xent.scan_labels,
                         (arr(i64), i64, i64, w, arr(i64), arr(f64), arr(f64), b)))
        for w, grow, den, losses, result, grad in (
                (none, none, arr(f64), none, v1, m2),       # mean, fused gradient
                (none, none, arr(f64), v1, none, none),     # none, forward
                (v1, arr(f64), arr(f64), none, v1, m2),     # weights, grad_output rows
                (none, none, none, none, v1, none)):        # no rows (den None)
            jobs.append((f"xent_hard_rows[{tag}, w={w}, grad={grad}, losses={losses}]",
                         xent.xent_hard_rows,
                         (m2, arr(i64), w, f64, i64, f64, f64, grow, i64, b, den, losses, result,
                          arr(f64), arr(i64), grad, i64, b)))
        for w, grad, losses, result in ((none, m2, none, v1), (v1, none, v1, none)):
            jobs.append((f"xent_soft_rows[{tag}, w={w}, grad={grad}]", xent.xent_soft_rows,
                         (m2, m2, w, f64, f64, none, i64, b, f64, losses, result, arr(f64),
                          arr(i64), grad, i64, b)))
        for name, kernel in (("bce_probs", binary.bce_probs_flat), ("bce_logits", binary.bce_logits_flat)):
            for w, losses, grad, result in ((none, none, v1, v1), (arr(f64), v1, none, none)):
                jobs.append((f"{name}[{tag}, w={w}, grad={grad}]", kernel,
                             (v1, v1, w, w, w, f64, losses, grad, arr(f64), arr(i64), result, f64, b)))
        for grad in (none, m2):
            jobs.append((f"divergence_rows[{tag}, grad={grad}]", divergence.divergence_rows,
                         (m2, m2, i64, m2, grad, i64, b)))
    for src, dst, nd in ((types.float16, types.float32, 2), (types.float32, types.float16, 1),
                         (types.int64, types.float64, 3), (types.boolean, types.float64, 1)):
        jobs.append((f"_gather[{src}->{dst}, ndim={nd}]", _arrays._gather,
                     (arr(src), i64, types.UniTuple(i64, nd), types.UniTuple(i64, nd), arr(dst))))
        jobs.append((f"_scatter[{src}->{dst}, ndim={nd}]", _arrays._scatter,
                     (arr(src), arr(dst), i64, types.UniTuple(i64, nd), types.UniTuple(i64, nd))))

    ptxas = shutil.which("ptxas") or next(iter(glob.glob(os.path.join(
        os.path.dirname(sys.executable), "..", "lib", "python*", "site-packages", "nvidia",
        "cuda_nvcc", "bin", "ptxas"))), None)
    failures = 0
    for name, kernel, sig in jobs:
        try:
            ptx, _ = cuda.compile_ptx(kernel.py_func, sig, cc=cc)
        except Exception as exc:  # noqa: BLE001 - report every failure
            failures += 1
            print(f"FAIL {name}: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
            if os.environ.get("FASTXENT_COMPILE_TRACEBACK"):
                raise
            continue
        f64_ops = len(re.findall(r"\.f64\b", ptx))
        line = f"ok   {name}: {len(ptx)} chars of PTX, {f64_ops} f64 operands"
        if args.dump:
            os.makedirs(args.dump, exist_ok=True)
            with open(os.path.join(args.dump, re.sub(r"[^\w.-]+", "_", name) + ".ptx"), "w") as fh:
                fh.write(ptx)
        if args.ptxas and ptxas:
            with tempfile.NamedTemporaryFile("w", suffix=".ptx", delete=False) as fh:
                fh.write(ptx)
            limit = args.maxrregcount or getattr(kernel, "targetoptions", {}).get("max_registers")
            extra = [f"-maxrregcount={limit}"] if limit else []
            out = subprocess.run([ptxas, "-v", f"-arch=sm_{cc[0]}{cc[1]}", *extra, fh.name, "-o", os.devnull],
                                 capture_output=True, text=True)
            os.unlink(fh.name)
            regs = re.findall(r"Used (\d+) registers", out.stderr)
            spill = re.findall(r"(\d+) bytes spill stores", out.stderr)
            smem = re.findall(r"(\d+) bytes smem", out.stderr)
            line += f"; ptxas: {regs[-1] if regs else '?'} registers, {spill[-1] if spill else '?'} spill bytes, {smem[-1] if smem else '?'} B smem"
            if out.returncode:
                failures += 1
                line += f"; ptxas FAILED: {out.stderr.strip()[:200]}"
        print(line)
    print(f"{len(jobs) - failures} compiled, {failures} failed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
