"""Hydra configuration files, shipped as package data (``pkg://step_epm.conf``)."""
