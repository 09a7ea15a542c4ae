"""Range checks for the structured (dataclass) configs.

Every check raises :class:`ConfigError` whose message names the field (its
dotted path in the config), the value and the allowed range, so a bad
command line fails before any work starts.

:func:`validated` turns a Hydra DictConfig into its structured dataclass,
refusing unknown keys (a '+key=value' override can add one) and surfacing
the dataclass' own range error.
"""

import dataclasses


class ConfigError(ValueError):
    """A config field outside its allowed range."""


def check_range(field: str, value, lo=None, hi=None, lo_open=False, hi_open=False):
    """Require lo <= value <= hi (or strict, with lo_open / hi_open)."""
    ok = True
    if lo is not None:
        ok &= value > lo if lo_open else value >= lo
    if hi is not None:
        ok &= value < hi if hi_open else value <= hi
    if not ok:
        left = "-inf" if lo is None else f"{lo:g}"
        right = "inf" if hi is None else f"{hi:g}"
        rng = f"{'(' if lo_open or lo is None else '['}{left}, {right}{')' if hi_open or hi is None else ']'}"
        raise ConfigError(f"{field} = {value!r} is outside the allowed range {rng}")


def check_choice(field: str, value, choices):
    """Require value in choices."""
    if value not in choices:
        raise ConfigError(f"{field} = {value!r} is not one of {sorted(choices)}")


def _unknown_keys(node, schema, prefix="") -> list[str]:
    """Keys of ``node`` (a DictConfig) that ``schema`` (a dataclass) lacks, recursively."""
    from omegaconf import DictConfig, OmegaConf

    known = {f.name for f in dataclasses.fields(schema)}
    bad = []
    for key in node.keys():
        if key not in known:
            bad.append(f"{prefix}{key}")
            continue
        sub = OmegaConf.get_type(node, key)
        if dataclasses.is_dataclass(sub) and isinstance(node[key], DictConfig):
            bad += _unknown_keys(node[key], sub, f"{prefix}{key}.")
    return bad


def validated(cfg, schema, where: str):
    """The typed, range-checked ``schema`` instance of a DictConfig.

    Raises ConfigError naming an unknown key (``where`` says which module
    documents the fields) or the field out of range.
    """
    from omegaconf import OmegaConf

    bad = _unknown_keys(cfg, schema)
    if bad:
        raise ConfigError(f"unknown config key(s) {', '.join(bad)}; the known fields are in "
                          f"{where}")
    try:
        obj = OmegaConf.to_object(cfg)
    except ConfigError:
        raise
    except Exception as exc:  # OmegaConf may wrap the dataclass' own error
        cause = exc.__cause__ or exc.__context__
        if isinstance(cause, ConfigError):
            raise cause from None
        raise
    if not isinstance(obj, schema):
        raise ConfigError(f"config is not a {schema.__name__} (got {type(obj).__name__})")
    return obj
