"""Load and validate experiment configs against workflow/schemas/config.schema.yaml."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import yaml

SCHEMA_PATH = Path(__file__).resolve().parents[2] / "workflow" / "schemas" / "config.schema.yaml"


class ConfigError(ValueError):
    """A config that does not match the schema; the message names the offending key."""


def _schema() -> dict[str, Any]:
    path = SCHEMA_PATH
    if not path.exists():  # installed without the workflow folder: use the packaged copy
        path = Path(__file__).with_name("config.schema.yaml")
    return yaml.safe_load(path.read_text())


def _fill_defaults(obj: Any, schema: dict[str, Any]) -> None:
    if not isinstance(obj, dict):
        return
    for key, sub in schema.get("properties", {}).items():
        if key not in obj and "default" in sub:
            obj[key] = copy.deepcopy(sub["default"])
        if key in obj:
            _fill_defaults(obj[key], sub)


def validate_config(config: dict[str, Any], files: Any = ()) -> dict[str, Any]:
    """Validate ``config`` (a copy is returned with schema defaults filled in).

    Raises :class:`ConfigError` whose message names the key path and the problem,
    e.g. ``config error at train.steps: -1 is less than the minimum of 1``. ``files``:
    the YAML files ``config`` was read from by another loader (Snakemake's, which keeps
    the last of duplicate keys silently); they are re-read strictly (duplicate keys,
    syntax errors with line numbers).
    """
    import jsonschema

    from rlsparsity.config_validate import check_semantics, coerce_numbers, load_yaml

    for f in files or ():
        if Path(f).suffix != ".json" and Path(f).is_file():
            load_yaml(Path(f).read_text(), f)

    if not isinstance(config, dict):
        raise ConfigError(f"config error at <top level>: expected a mapping of keys, got {type(config).__name__}")
    schema = _schema()
    cfg = coerce_numbers(copy.deepcopy(dict(config)), schema)  # YAML 1.1 reads 1e-5 as a string
    validator = jsonschema.Draft202012Validator(schema)
    errors = sorted(validator.iter_errors(cfg), key=lambda e: [str(p) for p in e.absolute_path])
    if errors:
        e = errors[0]
        where = ".".join(str(p) for p in e.absolute_path) or "<top level>"
        more = f" (and {len(errors) - 1} more error(s))" if len(errors) > 1 else ""
        raise ConfigError(f"config error at {where}: {' '.join(e.message.split())}{more}")
    _fill_defaults(cfg, schema)
    # cross-field checks the schema cannot express
    fams = set(cfg["families"])
    for i, block in enumerate(cfg["grids"]):
        if block["families"] != "all":
            unknown = [f for f in block["families"] if f not in fams]
            if unknown:
                raise ConfigError(f"config error at grids.{i}.families: {unknown} not listed under 'families'")
    check_semantics(cfg)  # task, zero-run grids, stage families, family paths, hparams (coerced in place)
    from rlsparsity.families import check_family_name

    for name, spec in cfg["families"].items():
        check_family_name(name, spec)
    return cfg


def load_config(path: str | Path, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    p = Path(path)
    if not p.exists():
        raise ConfigError(f"config file not found: {p}")
    # JSON (config.resolved.json) with json: YAML 1.1 reads json.dumps' "1e-05" as a string
    from rlsparsity.config_validate import load_yaml

    try:
        text = p.read_text()
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"cannot read config file {p}: {err.__class__.__name__}") from None
    if p.suffix == ".json":
        try:
            cfg = json.loads(text)
        except json.JSONDecodeError as err:
            raise ConfigError(f"config error in {p}, line {err.lineno}, column {err.colno}: {err.msg}") from None
    else:
        cfg = load_yaml(text, p)  # errors name the line; duplicate keys are errors
    cfg = cfg if cfg is not None else {}
    if overrides and isinstance(cfg, dict):
        cfg.update(overrides)
    return validate_config(cfg)


