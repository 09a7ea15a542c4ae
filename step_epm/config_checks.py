"""Range checks for the structured (dataclass) configs.

Every check raises :class:`ConfigError` whose message names the field (its
dotted path in the config), the value and the allowed range, so a bad
command line fails before any work starts.
"""


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
