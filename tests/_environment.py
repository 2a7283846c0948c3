"""pytest plugin loaded before any test module (``-p tests._environment`` in
pyproject.toml), so that it runs before numba is imported.

On a machine without an NVIDIA GPU the CUDA kernels run on Numba's CUDA
simulator, which must be switched on before numba is first imported."""

import glob
import os

if "NUMBA_ENABLE_CUDASIM" not in os.environ and not glob.glob("/dev/nvidia[0-9]*"):
    os.environ["NUMBA_ENABLE_CUDASIM"] = "1"
