"""What every Hydra command line of the project shares: the run-directory
hash resolver and the validate-then-run entry with clear exit codes.

Exit codes: 2 for a config error (the message names the field and its
allowed range; no work has started), 3 for a bad input file (the message
names the file and the field).
"""

import logging
import sys

from omegaconf import OmegaConf

from .config_checks import ConfigError

log = logging.getLogger(__name__)


def register_hash_resolver(name: str, config_hash) -> None:
    """Register the OmegaConf resolver ``${name:}`` = config_hash(root config).

    A ConfigError while hashing (e.g. a glob that matches no file) gives
    "nomatch": validation reports it with the field named."""
    def resolve(*, _root_):
        try:
            return config_hash(_root_)
        except ConfigError:
            return "nomatch"

    if not OmegaConf.has_resolver(name):
        OmegaConf.register_new_resolver(name, resolve)


def validate_and_run(prog: str, cfg, validate, run, file_errors=()):
    """Resolve ``cfg`` (a DictConfig), validate it, run it; a config error
    exits with 2 and an input-file error (``file_errors``) with 3, each
    with a one-line message on stderr (and in the log)."""
    resolved = OmegaConf.to_yaml(cfg, resolve=True)
    try:
        obj = validate(cfg)
        return run(obj, resolved)
    except ConfigError as exc:
        log.error("invalid config: %s", exc)
        print(f"{prog}: invalid config: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    except tuple(file_errors) as exc:
        log.error("%s", exc)
        print(f"{prog}: {exc}", file=sys.stderr)
        raise SystemExit(3) from None
