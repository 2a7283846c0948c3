"""numba.cuda versions of fastxent's kernels, for CUDA arrays (numba device
arrays, CuPy arrays, PyTorch CUDA tensors, anything with
``__cuda_array_interface__``).  ``fastxent._backend`` imports ``backend``
from here on the first call with a CUDA array; nothing here is imported by
``import fastxent``.  See docs/gpu.md."""
