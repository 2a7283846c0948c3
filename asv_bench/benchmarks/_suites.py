"""Base classes shared by the asv suites: one public function, timed over
implementation x shape x dtype, with its inputs made and its JIT warmed in
``setup`` (``cases.prepare``).  A combination that does not exist (a peer that
is not installed, a function missing at an older commit) raises
NotImplementedError in ``setup``, which asv records as skipped ("n/a")."""

from . import cases


class FunctionTimeSuite:
    function: str = ""  # the public name, a key of cases.FUNCTIONS

    params = [cases.IMPLS, list(cases.SHAPES), cases.DTYPES]
    param_names = ["impl", "shape", "dtype"]

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        cls.params = [cases.impls_for(cls.function), list(cases.SHAPES), cases.DTYPES]
    # The cells take 0.1-100 ms; asv's defaults (2 rounds of up to 10 repeats,
    # 20 s each) would make a full run take hours on two cores.
    rounds = 1
    repeat = (1, 7, 2.0)
    warmup_time = 0.05
    timeout = 180  # a cold Numba cache compiles a kernel on the first call (~10 s)

    def setup(self, impl, shape, dtype):
        self.call = cases.prepare(impl, self.function, shape, dtype)

    def teardown(self, impl, shape, dtype):
        self.call = None
