"""The control fields of a run and the stamping contract, in one place.

Every backend keeps, per run: one sequence **counter**; **flags** (GO: start together, STOP: leave
the loop); per worker a **stats** row (columns STAT_*), a **clock** row (CLOCK_*, wall-clock
seconds) and a staleness **histogram** row of HIST_BINS bins (the last bin collects
tau >= HIST_BINS - 1).  A worker's state column moves STARTING -> READY -> RUNNING -> one of
DONE, DIVERGED, FAILED.

Stamping contract: before reading the parameters a worker reads the counter
(``t_read``); after computing its gradient it claims ``t_write = fetch_add(counter, 1)``; the
update's staleness is ``tau = t_write - t_read`` (updates landed in between, >= 0); it applies
``lr = table[min(tau, T - 1)]`` and counts tau in its histogram row.  So the counter ends equal
to the applied updates, and the histograms total it.  The Ray backend stamps with a parameter
server's version the same way.
"""

HIST_BINS = 1024

# Words of the flags field.
FLAG_GO = 0
FLAG_STOP = 1

# Columns of a worker's stats row (int64).
STAT_UPDATES = 0  # updates this worker applied
STAT_MAX_TAU = 1  # largest tau it measured (linear workers write it once per chunk of updates)
STAT_SAMPLES = 2  # rows it processed
STAT_STATE = 3  # one of STATE_*
STAT_REFITS = 4  # policy refits it did from the histogram
STAT_COLUMNS = 8  # a row fills one cache line

STATE_STARTING, STATE_READY, STATE_RUNNING, STATE_DONE, STATE_DIVERGED, STATE_FAILED = range(6)

# Columns of a worker's clock row (float64 wall-clock seconds, time.time(): shared across processes).
CLOCK_LOOP_START = 0
CLOCK_LOOP_END = 1

# What a compiled loop returns.
STATUS_OK = 0
STATUS_DIVERGED = 1
