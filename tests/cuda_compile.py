"""Compile every fastxent CUDA kernel to PTX (and, with ptxas, to SASS) for a
real GPU architecture, without a GPU: a check of what the simulator cannot
see (typing in the CUDA target, float16 casts, warp shuffles, register use,
the shape of the element loops).

Needs numba-cuda with NVVM and NVRTC (``pip install 'fastxent[cuda-compile]'``),
no driver; ``--sass`` also needs ``nvdisasm`` (on the PATH, in CUDA_HOME/bin,
or from the ``nvidia-cuda-nvdisasm`` wheel):

    python tests/cuda_compile.py [--cc 9.0] [--ptxas] [--sass] [--dump DIR] [--json FILE]

Prints one line per kernel specialisation (PTX size, float64 operands,
registers and spills when ptxas is found, and with --sass the figures of
the element loops, see ``tests/sass.py``) and exits non-zero if any fails
to compile.  ``tests/test_cuda_compile.py`` runs the same compilation in
the test suite and holds the figures against ``tests/cuda_budgets.json``.
"""

import argparse
import glob
import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def find_tool(name):
    """A CUDA tool (ptxas, nvdisasm): an nvidia wheel, CUDA_HOME/bin, or the PATH.

    The wheels come first: NVVM comes from the same wheel set (numba-cuda finds
    it there), and a ptxas older than that NVVM rejects its PTX ("Unsupported
    .version"), as a system CUDA 13.0 on the PATH does with a 13.5 NVVM."""
    site = os.path.join(sysconfig.get_paths()["purelib"], "nvidia")
    for pattern in ("cu13", "cu12", "cuda_nvcc", "cuda_nvdisasm", "*"):
        hits = sorted(glob.glob(os.path.join(site, pattern, "bin", name)))
        if hits:
            return hits[0]
    for home in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH")):
        if home and os.path.exists(os.path.join(home, "bin", name)):
            return os.path.join(home, "bin", name)
    return shutil.which(name)


def prepare(cc):
    """Make numba.cuda compile for ``cc`` without a GPU (call before numba is
    imported), and return the kernel jobs: (name, dispatcher, signature, itemsize)."""
    os.environ["FASTXENT_CUDA_COMPILE_ONLY"] = "1"
    os.environ.pop("NUMBA_ENABLE_CUDASIM", None)
    if ROOT not in sys.path:
        sys.path.insert(0, ROOT)
    try:
        import numba.cuda.dispatcher as dispatcher
    except ImportError:  # pragma: no cover
        dispatcher = None

    class _Device:  # device functions compile for "the current device": make it cc
        compute_capability = cc

    if dispatcher is not None and hasattr(dispatcher, "get_current_device"):
        dispatcher.get_current_device = lambda: _Device()
    return _jobs()


def _jobs():
    try:
        from numba.cuda import types
    except ImportError:  # the CUDA target built into numba
        from numba.core import types

    from fastxent.cuda import _arrays, binary, divergence, linear, softmax, xent

    none, b, i64, f64 = types.none, types.boolean, types.int64, types.float64

    def arr(dt, nd=1):
        return types.Array(dt, nd, "C")

    jobs = []
    for f in (types.float32, types.float64):
        tag = str(f)
        size = f.bitwidth // 8
        m2, v1 = arr(f, 2), arr(f, 1)
        jobs.append((f"softmax_rows[{tag}]", softmax.softmax_rows,
                     (m2, m2, i64, i64, b), size))
        for w in (none, v1):
            jobs.append((f"scan_labels[{tag}, weight={w}]", xent.scan_labels,
                         (arr(i64), i64, i64, w, arr(i64), arr(f64), arr(f64), b), 8))
        for w, grow, den, losses, result, grad in (
                (none, none, arr(f64), none, v1, m2),       # mean, fused gradient
                (none, none, arr(f64), v1, none, none),     # none, forward
                (v1, arr(f64), arr(f64), none, v1, m2),     # weights, grad_output rows
                (none, none, none, none, v1, none)):        # no rows (den None)
            jobs.append((f"xent_hard_rows[{tag}, w={w}, grad={grad}, losses={losses}]",
                         xent.xent_hard_rows,
                         (m2, arr(i64), w, f64, i64, f64, f64, grow, i64, b, den, losses, result,
                          arr(f64), arr(i64), grad, i64, b), size))
        for w, grad, losses, result in ((none, m2, none, v1), (v1, none, v1, none)):
            jobs.append((f"xent_soft_rows[{tag}, w={w}, grad={grad}]", xent.xent_soft_rows,
                         (m2, m2, w, f64, f64, none, i64, b, f64, losses, result, arr(f64),
                          arr(i64), grad, i64, b), size))
        for name, kernel in (("bce_probs", binary.bce_probs_flat), ("bce_logits", binary.bce_logits_flat)):
            for w, losses, grad, result in ((none, none, v1, v1), (arr(f64), v1, none, none)):
                jobs.append((f"{name}[{tag}, w={w}, grad={grad}]", kernel,
                             (v1, v1, w, w, w, f64, losses, grad, arr(f64), arr(i64), result, f64, b),
                             size))
        for grad in (none, m2):
            jobs.append((f"divergence_rows[{tag}, grad={grad}]", divergence.divergence_rows,
                         (m2, m2, i64, m2, grad, i64, b), size))
        # the linear cross-entropy's products: logits = x W^T + bias, dx = G W, dW += G^T x
        for (ta, tb), bias in (((False, True), v1), ((False, True), none), ((False, False), none),
                               ((True, False), none)):
            jobs.append((f"gemm[{tag}, transpose_a={ta}, transpose_b={tb}, bias={bias}]",
                         linear.GEMM[ta, tb, size], (m2, m2, bias, arr(f, 3), b, i64), size))
        for bias in (none, v1):
            jobs.append((f"gemm_sum_slices[{tag}, bias={bias}]", linear.sum_slices,
                         (arr(f, 3), bias, m2, b), size))
        jobs.append((f"linear_scale_into[{tag}]", linear.scale_into, (m2, m2, f), size))
        jobs.append((f"linear_add_column_sums[{tag}]", linear.add_column_sums, (arr(f64), m2), size))
        for w in (none, m2):
            jobs.append((f"linear_finish_loss[{tag}, w={w}]", linear.finish_loss,
                         (arr(f64), b, f64, f64, w, arr(f64), arr(i64), v1, b), size))
    jobs.append(("linear_add_loss[float32]", linear.add_loss, (arr(f64), arr(types.float32)), 4))
    for src, dst, nd in ((types.float16, types.float32, 2), (types.float32, types.float16, 1),
                         (types.int64, types.float64, 3), (types.boolean, types.float64, 1)):
        jobs.append((f"_gather[{src}->{dst}, ndim={nd}]", _arrays._gather,
                     (arr(src), i64, types.UniTuple(i64, nd), types.UniTuple(i64, nd), arr(dst)), 4))
        jobs.append((f"_scatter[{src}->{dst}, ndim={nd}]", _arrays._scatter,
                     (arr(src), arr(dst), i64, types.UniTuple(i64, nd), types.UniTuple(i64, nd)), 4))
    return jobs


def compile_job(job, cc, ptxas=None, nvdisasm=None, maxrregcount=None, dump=None):
    """Compile one job; returns a dict of its figures (``error`` on failure)."""
    from numba import cuda

    name, kernel, sig, itemsize = job
    result = {"name": name}
    try:
        ptx, _ = cuda.compile_ptx(kernel.py_func, sig, cc=cc, lineinfo=bool(nvdisasm))
    except Exception as exc:  # noqa: BLE001 - report every failure
        if os.environ.get("FASTXENT_COMPILE_TRACEBACK"):
            raise
        result["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        return result
    result["ptx_chars"] = len(ptx)
    result["f64_operands"] = len(re.findall(r"\.f64\b", ptx))
    stem = re.sub(r"[^\w.-]+", "_", name)
    if dump:
        os.makedirs(dump, exist_ok=True)
        with open(os.path.join(dump, stem + ".ptx"), "w") as fh:
            fh.write(ptx)
    if not ptxas:
        return result
    limit = maxrregcount or getattr(kernel, "targetoptions", {}).get("max_registers")
    result["max_registers"] = limit
    with tempfile.TemporaryDirectory() as tmp:
        ptx_path = os.path.join(tmp, "k.ptx")
        cubin = os.path.join(tmp, "k.cubin")
        with open(ptx_path, "w") as fh:
            fh.write(ptx)
        extra = [f"-maxrregcount={limit}"] if limit else []
        if nvdisasm:
            extra.append("-lineinfo")
        out = subprocess.run([ptxas, "-v", f"-arch=sm_{cc[0]}{cc[1]}", *extra, ptx_path, "-o", cubin],
                             capture_output=True, text=True)
        if out.returncode:
            result["error"] = f"ptxas failed: {out.stderr.strip()[:300]}"
            return result
        regs = re.findall(r"Used (\d+) registers", out.stderr)
        spill = re.findall(r"(\d+) bytes spill stores", out.stderr)
        stack = re.findall(r"(\d+) bytes stack frame", out.stderr)
        result["registers"] = int(regs[-1]) if regs else None
        result["spill_bytes"] = int(spill[-1]) if spill else None
        result["stack_bytes"] = int(stack[-1]) if stack else None
        if nvdisasm:
            listing = subprocess.run([nvdisasm, "-c", "-g", cubin], capture_output=True, text=True,
                                     check=True).stdout
            if dump:
                with open(os.path.join(dump, stem + ".sass"), "w") as fh:
                    fh.write(listing)
            from tests import sass

            result["sass"] = sass.summarize(listing, itemsize)
    return result


def _line(result):
    if "error" in result:
        return f"FAIL {result['name']}: {result['error']}"
    line = f"ok   {result['name']}: {result['ptx_chars']} chars of PTX, {result['f64_operands']} f64 operands"
    if "registers" in result:
        line += (f"; {result['registers']} registers (limit {result['max_registers']}), "
                 f"{result['spill_bytes']} spill bytes, {result['stack_bytes']} stack bytes")
    figures = result.get("sass")
    if figures:
        for name, paths in sorted(figures["passes"].items()):
            for path, f in sorted(paths.items()):
                line += (f"\n       {name} {path}: {f['per_element']} SASS/element, "
                         f"{f['in_flight']} loads in flight, {f['load_width']}-bit loads"
                         + (f", {f['store_width']}-bit stores" if f["store_width"] else ""))
        if figures["loop_spills"]:
            line += f"\n       {figures['loop_spills']} local-memory accesses in element loops"
    return line


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cc", default="9.0", help="compute capability, e.g. 9.0 (H100/H200)")
    parser.add_argument("--ptxas", action="store_true", help="assemble with ptxas -v (registers, spills)")
    parser.add_argument("--sass", action="store_true", help="also disassemble and read the element loops")
    parser.add_argument("--dump", help="write the PTX (and SASS) files to this folder")
    parser.add_argument("--json", help="write the figures to this file")
    parser.add_argument("--only", action="append",
                        help="compile only kernels whose name contains this (repeatable)")
    parser.add_argument("--require-sass", action="store_true",
                        help="exit with status 3 if NVVM/NVRTC, ptxas or nvdisasm is missing")
    parser.add_argument("--maxrregcount", type=int, default=None,
                        help="ptxas register limit (default: the kernel's max_registers)")
    args = parser.parse_args(argv)
    cc = tuple(int(v) for v in args.cc.split("."))
    try:
        jobs = prepare(cc)
    except ImportError as exc:
        print(f"toolchain unavailable: numba.cuda cannot be imported ({exc})")
        return 3
    if args.only:
        jobs = [job for job in jobs if any(part in job[0] for part in args.only)]
    ptxas = find_tool("ptxas") if (args.ptxas or args.sass) else None
    nvdisasm = find_tool("nvdisasm") if args.sass else None
    if (args.ptxas or args.sass) and not ptxas:
        print("ptxas not found: PTX only")
    if args.sass and not nvdisasm:
        print("nvdisasm not found: no SASS figures")
    if args.require_sass and not (ptxas and nvdisasm):
        print("toolchain unavailable: ptxas or nvdisasm not found")
        return 3
    results = []
    for job in jobs:
        result = compile_job(job, cc, ptxas, nvdisasm, args.maxrregcount, args.dump)
        if args.require_sass and not results and "error" in result and any(
                word in result["error"] for word in ("DynamicLibNotFound", "NVVM", "Nvvm", "nvrtc",
                                                     "NVRTC", "libdevice")):
            print(f"toolchain unavailable: {result['error']}")
            return 3
        results.append(result)
        print(_line(result))
    failures = sum("error" in r for r in results)
    print(f"{len(jobs) - failures} compiled, {failures} failed")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(results, fh, indent=1)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
