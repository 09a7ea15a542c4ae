"""STEP: structuro-elastoplastic avalanches in amorphous solids.

The repository's top-level folders are installed under this namespace:
``particles/`` -> ``step_epm.particles``, ``lattice/`` -> ``step_epm.lattice``,
``calibrate/`` -> ``step_epm.calibrate``, ``conf/`` -> ``step_epm.conf``.
"""

from importlib.metadata import PackageNotFoundError, version as _version

try:
    __version__ = _version("step-epm")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0+unknown"
