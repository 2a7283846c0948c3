"""Start-up cost: ``import fastxent`` and the first call, in a fresh Python
process (asv's timeraw_).  With a warm Numba on-disk cache the first call loads
machine code; with a cold one (an empty NUMBA_CACHE_DIR) it compiles."""

import subprocess
import sys
import textwrap

_INPUTS = """
import numpy as np
x = np.random.default_rng(0).standard_normal((4096, 1000), dtype=np.float32)
y = np.random.default_rng(1).integers(0, 1000, 4096)
"""

_FIRST_CALL = """
import fastxent
fastxent.cross_entropy_with_grad(x, y)
"""

_COLD_CACHE = """
import atexit, os, shutil, tempfile
os.environ["NUMBA_CACHE_DIR"] = _cache_dir = tempfile.mkdtemp(prefix="fastxent-asv-")
atexit.register(shutil.rmtree, _cache_dir, True)
"""


class Import:
    repeat = (1, 5, 10.0)

    def timeraw_import_fastxent(self):
        return "import fastxent", "import numpy"


class ImportAndFirstCall:
    """import fastxent + cross_entropy_with_grad on 4096 x 1000 float32 (parallel kernel)."""

    params = [["warm", "cold"]]
    param_names = ["numba_cache"]
    number = 1
    repeat = (1, 3, 60.0)
    timeout = 600

    def setup(self, numba_cache):
        if numba_cache == "warm":  # fill the on-disk cache in another process first
            subprocess.run([sys.executable, "-c", _INPUTS + _FIRST_CALL], check=True)

    def timeraw_import_and_first_call(self, numba_cache):
        setup = _INPUTS + (_COLD_CACHE if numba_cache == "cold" else "")
        return textwrap.dedent(_FIRST_CALL), setup
