"""Test session settings: headless plots, pinned numba threading.

The threading layer and thread count are fixed before numba is imported so
that results and timings do not depend on the machine's defaults.
"""
import os

os.environ.setdefault("MPLBACKEND", "Agg")
os.environ.setdefault("NUMBA_THREADING_LAYER", "workqueue")
os.environ.setdefault("NUMBA_NUM_THREADS", "2")
