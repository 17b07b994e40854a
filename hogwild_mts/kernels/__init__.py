"""What every backend's workers run: the atomics on shared words, the numba loops of the linear
models (:mod:`.linear`, checked against the slow :mod:`.reference`), the torch flat binding and
the stamped updates of a network (:mod:`.flat`), and how a run's rows are split (:mod:`.split`).

Nothing here imports a backend: the shared-memory workers, the simulator and the Ray actors all
import these modules."""
