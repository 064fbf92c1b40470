"""Config checks beyond the JSON schema: YAML syntax, hyperparameters, grids, names.

* :func:`load_yaml` reads YAML strictly: a syntax error names the file, line and column;
  a key given twice in one mapping is an error (PyYAML would keep the last silently).
* :func:`coerce_numbers` turns numeric strings into numbers where the schema expects a
  number: PyYAML follows YAML 1.1, which reads ``1e-5`` (no dot) as the *string* "1e-5".
* :func:`check_hparams` validates ``train.hparams`` / ``entropy.hparams`` against each
  algorithm's accepted fields, derived from the algorithm modules themselves without
  importing them (importing torch would cost seconds at every DAG parse): the keys of
  the module's ``DEFAULTS`` (for the algorithm) plus the optional keys it reads with
  ``hp.get("key", default)``. Types follow the defaults: bool, int, float (int accepted,
  numeric strings coerced, non-finite refused), str, list; a ``None`` default accepts any
  scalar. A misspelt key is an error that suggests the closest accepted one. A key the
  module lists in its ``CHOICES`` literal (e.g. ppo's ``rollout_gather``) must be one of the
  listed values. ``train.hparams_by_precision.<precision>`` blocks are checked the same way.
* :func:`check_semantics`: unknown task, a grid block that expands to zero runs, stage
  blocks naming families that are not configured, family paths that look local but are
  not usable model folders, a family's ``sharding`` that does not match its ``gpus``.

Every failure raises ``ConfigError`` (from :mod:`rlsparsity.config`) with one line
``config error at <key path>: <problem>``.
"""

from __future__ import annotations

import ast
import difflib
import functools
import importlib.util
import math
import re
from pathlib import Path
from typing import Any

import yaml

_NUMBER = re.compile(r"^[+-]?(\d[\d_]*\.?\d*|\.\d+)([eE][+-]?\d+)?$")
_INT = re.compile(r"^[+-]?\d+$")


def _error(where: str, msg: str) -> Exception:
    from rlsparsity.config import ConfigError

    return ConfigError(f"config error at {where}: {msg}")


# --------------------------------------------------------------------------- strict YAML


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses a key given twice in one mapping."""


def _construct_mapping(loader: _StrictLoader, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
    loader.flatten_mapping(node)
    seen: dict[Any, Any] = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        try:
            hash(key)
        except TypeError:
            raise yaml.constructor.ConstructorError(None, None, f"unhashable key {key!r}",
                                                    key_node.start_mark) from None
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r} (first given on line {seen[key].line + 1})",
                key_node.start_mark)
        seen[key] = key_node.start_mark
    return loader.construct_mapping(node, deep=deep)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def load_yaml(text: str, source: str | Path) -> Any:
    """Parse ``text`` (from file ``source``); errors name the file, line and column."""
    from rlsparsity.config import ConfigError

    try:
        return yaml.load(text, Loader=_StrictLoader)  # noqa: S506 (a SafeLoader subclass)
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        where = f"{source}, line {mark.line + 1}, column {mark.column + 1}" if mark else str(source)
        what = " ".join(str(x) for x in (err.context, err.problem) if x)
        raise ConfigError(f"config error in {where}: {' '.join(what.split())}") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"config error in {source}: {' '.join(str(err).split())}") from None


# --------------------------------------------------------------------------- numbers


def _expects_number(schema: Any) -> bool:
    if not isinstance(schema, dict):
        return False
    if schema.get("type") == "number":
        return True
    return any(_expects_number(s) for k in ("oneOf", "anyOf") for s in schema.get(k, []))


def _sub_schemas(schema: dict[str, Any]) -> list[dict[str, Any]]:
    return [schema] + [s for k in ("oneOf", "anyOf") for s in schema.get(k, []) if isinstance(s, dict)]


def _to_number(value: str) -> float | int | None:
    """The number a numeric string spells (int for integer digits), or None."""
    s = value.strip()
    if not _NUMBER.match(s):
        return None
    return int(s.replace("_", "")) if _INT.match(s) else float(s.replace("_", ""))


def coerce_numbers(obj: Any, schema: Any) -> Any:
    """A copy of ``obj`` with numeric strings turned into floats where ``schema`` expects a number."""
    if not isinstance(schema, dict):
        return obj
    if isinstance(obj, str) and _expects_number(schema):
        num = _to_number(obj)
        return float(num) if num is not None else obj
    if isinstance(obj, dict):
        out = {}
        for key, val in obj.items():
            sub: Any = None
            for s in _sub_schemas(schema):
                sub = s.get("properties", {}).get(key) or (s.get("additionalProperties")
                                                           if isinstance(s.get("additionalProperties"), dict) else None)
                if sub is not None:
                    break
            out[key] = coerce_numbers(val, sub)
        return out
    if isinstance(obj, list):
        items = next((s["items"] for s in _sub_schemas(schema) if isinstance(s.get("items"), dict)), None)
        return [coerce_numbers(v, items) for v in obj]
    return obj


# --------------------------------------------------------------------------- hyperparameters


def _literal(node: ast.AST, env: dict[str, Any]) -> Any:
    """Value of a defaults expression: literals, names bound earlier, dict(...), {**x, k: v}."""
    if isinstance(node, ast.Name):
        return env[node.id]
    if isinstance(node, ast.Dict):
        out: dict[Any, Any] = {}
        for k, v in zip(node.keys, node.values, strict=True):
            if k is None:
                out.update(_literal(v, env))
            else:
                out[_literal(k, env)] = _literal(v, env)
        return out
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "dict":
        out = {}
        for a in node.args:
            out.update(_literal(a, env))
        for kw in node.keywords:
            if kw.arg is None:
                out.update(_literal(kw.value, env))
            else:
                out[kw.arg] = _literal(kw.value, env)
        return out
    if isinstance(node, (ast.List, ast.Tuple)):
        return [_literal(e, env) for e in node.elts]
    return ast.literal_eval(node)


@functools.cache
def _module_defaults(module: str) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """(module-level DEFAULTS, optional keys read with ``hp.get(key, default)``, module-level
    CHOICES: key -> allowed values) of a module, from its source."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.origin:
        raise ImportError(f"cannot find module {module}")
    tree = ast.parse(Path(spec.origin).read_text(), spec.origin)
    env: dict[str, Any] = {}
    for stmt in tree.body:
        if isinstance(stmt, ast.Assign):
            targets = stmt.targets
        else:
            targets = [stmt.target] if isinstance(stmt, ast.AnnAssign) else []
        value = getattr(stmt, "value", None)
        for t in targets:
            if isinstance(t, ast.Name) and value is not None:
                try:
                    env[t.id] = _literal(value, env)
                except (ValueError, KeyError, TypeError, SyntaxError):
                    pass  # not a literal: not a defaults table
    optional: dict[str, Any] = {}
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "get"
            and isinstance(node.func.value, ast.Name)
            and node.func.value.id == "hp"
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            default = None
            if len(node.args) > 1:
                try:
                    default = ast.literal_eval(node.args[1])
                except ValueError:
                    default = None
            optional.setdefault(node.args[0].value, default)
    return env.get("DEFAULTS", {}), optional, env.get("CHOICES", {})


def accepted_hparams(algorithm: str) -> dict[str, Any]:
    """Accepted hyperparameters of ``algorithm`` -> default (mirrors ``rlsparsity.algorithms.defaults``)."""
    from rlsparsity.algorithms import _ENTRY

    defaults, optional, _ = _module_defaults(_ENTRY[algorithm][0])
    if isinstance(defaults.get(algorithm), dict):
        defaults = defaults[algorithm]
    return {**optional, **defaults}


def hparam_choices(algorithm: str) -> dict[str, list[Any]]:
    """Hyperparameters of ``algorithm`` with a fixed set of values (its module's ``CHOICES``)."""
    from rlsparsity.algorithms import _ENTRY

    return {k: list(v) for k, v in _module_defaults(_ENTRY[algorithm][0])[2].items()}


def entropy_accepted_hparams() -> dict[str, Any]:
    """GRPO's accepted hyperparameters plus the DAPO settings the entropy stage sets
    (``top_entropy_quantile`` is set from rho and the variant, so not accepted)."""
    from rlsparsity.entropy import DAPO

    out = {**accepted_hparams("grpo"), **DAPO}
    out.pop("top_entropy_quantile", None)
    return out


def _kind(default: Any) -> str:
    if isinstance(default, bool):
        return "a boolean (true/false)"
    if isinstance(default, int):
        return "an integer"
    if isinstance(default, float):
        return "a number"
    if isinstance(default, str):
        return "a string"
    if isinstance(default, (list, tuple)):
        return "a list"
    return "a scalar"


def _check_value(where: str, value: Any, default: Any) -> Any:
    """``value`` checked (and numeric strings coerced) against the type of ``default``."""
    if isinstance(value, str) and not isinstance(default, str):
        num = _to_number(value)
        if num is None:
            raise _error(where, f"{value!r} is a string, expected {_kind(default)}")
        value = float(num) if isinstance(default, float) else num
    if isinstance(value, float) and not math.isfinite(value):
        raise _error(where, f"{value} is not a finite number")
    if default is None:
        if isinstance(value, (dict, list)):
            raise _error(where, f"{value!r} is not a scalar")
        return value
    ok = {
        bool: lambda v: isinstance(v, bool),
        int: lambda v: isinstance(v, int) and not isinstance(v, bool),
        float: lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
        str: lambda v: isinstance(v, str),
    }
    for typ, test in ok.items():
        if isinstance(default, typ):
            if not test(value):
                raise _error(where, f"{value!r} is not {_kind(default)}")
            return float(value) if typ is float else value
    if isinstance(default, (list, tuple)):
        if value is None:
            return value
        if not isinstance(value, list) or len(value) != len(default):
            raise _error(where, f"{value!r} is not a list of {len(default)} values (default {list(default)})")
        return [_check_value(f"{where}.{i}", v, d) for i, (v, d) in enumerate(zip(value, default, strict=True))]
    return value


def _check_block(where: str, hp: Any, accepted: dict[str, Any], algorithm: str,
                 choices: dict[str, list[Any]] | None = None) -> dict[str, Any]:
    if not isinstance(hp, dict):
        raise _error(where, f"expected a mapping of {algorithm} hyperparameters, got {hp!r}")
    out = {}
    for key, value in hp.items():
        if key not in accepted:
            close = difflib.get_close_matches(str(key), list(accepted), n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise _error(
                f"{where}.{key}",
                f"unknown hyperparameter for {algorithm}; {hint}accepted: {', '.join(sorted(accepted))}",
            )
        out[key] = _check_value(f"{where}.{key}", value, accepted[key])
        allowed = (choices or {}).get(key)
        if allowed is not None and out[key] not in allowed:
            raise _error(f"{where}.{key}", f"{value!r} is not one of {', '.join(repr(a) for a in allowed)}")
        if key in POSITIVE and isinstance(out[key], (int, float)) and not out[key] > 0:
            raise _error(f"{where}.{key}", f"{value!r} is not a positive number")
    return out


#: hyperparameters that must be > 0 wherever they appear (a zero lr trains nothing; a zero
#: temperature or batch is not a distribution or a batch)
POSITIVE = frozenset({"lr", "batch_size", "temperature", "sample_temperature", "n_prompts", "k",
                      "num_generations"})


def check_hparams(cfg: dict[str, Any]) -> None:
    """Validate (and coerce in place) ``train.hparams``, ``train.hparams_by_precision`` and ``entropy.hparams``."""
    tc = cfg.get("train") or {}
    blocks = [("train.hparams", tc.get("hparams") or {})]
    blocks += [(f"train.hparams_by_precision.{p}", b) for p, b in (tc.get("hparams_by_precision") or {}).items() if b]
    for where, hps in blocks:
        for alg, block in hps.items():
            hps[alg] = _check_block(f"{where}.{alg}", block, accepted_hparams(alg), alg, hparam_choices(alg))
    ent = cfg.get("entropy")
    if isinstance(ent, dict) and ent.get("hparams"):
        ent["hparams"] = _check_block(
            "entropy.hparams", ent["hparams"], entropy_accepted_hparams(), "grpo (entropy stage)"
        )


# --------------------------------------------------------------------------- semantics


def _check_block_runs(cfg: dict[str, Any]) -> None:
    from rlsparsity import grid as G

    for i, block in enumerate(cfg["grids"]):
        pairs = [(a, d) for a in block["algorithms"] for d in block["data"] if d in G.supported_data(a)]
        if not pairs:
            raise _error(
                f"grids.{i}",
                f"expands to zero runs: algorithms {block['algorithms']} have no "
                f"{'/'.join(block['data'])} data (online algorithms are on_policy only)",
            )


def _check_stage_families(cfg: dict[str, Any]) -> None:
    fams = set(cfg["families"])
    for where, spec in (
        ("entropy.families", (cfg.get("entropy") or {}).get("families")),
        ("subnetwork.families", (cfg.get("subnetwork") or {}).get("families")),
        ("causes.family", (cfg.get("causes") or {}).get("family")),
    ):
        if spec in (None, "all"):
            continue
        names = [spec] if isinstance(spec, str) else list(spec)
        unknown = [f for f in names if f not in fams]
        if unknown:
            raise _error(where, f"{unknown} not listed under 'families' (configured: {sorted(fams)})")


def _check_family_paths(cfg: dict[str, Any]) -> None:
    from rlsparsity.paths import PathProblem, looks_local, model_folder

    for name, spec in cfg["families"].items():
        path = (spec or {}).get("path")
        if path and looks_local(path):
            try:
                model_folder(path)
            except PathProblem as err:
                raise _error(f"families.{name}.path", str(err)) from None


def _check_sharding(cfg: dict[str, Any]) -> None:
    """``sharding`` agrees with ``gpus``: none on at most one GPU, ddp/fsdp on two or more."""
    for name, spec in cfg["families"].items():
        spec = spec or {}
        gpus, sharding = int(spec.get("gpus", 0) or 0), spec.get("sharding")
        if sharding == "none" and gpus > 1:
            raise _error(f"families.{name}.sharding", f"'none' runs on one GPU but gpus is {gpus}: use ddp or fsdp")
        if sharding in ("ddp", "fsdp") and gpus < 2:
            raise _error(f"families.{name}.sharding", f"{sharding!r} needs gpus >= 2 (gpus is {gpus})")
        if spec.get("fsdp_units") and sharding in ("none", "ddp"):
            raise _error(f"families.{name}.fsdp_units", f"applies to sharding fsdp, not {sharding!r}")
    # the configured batch_size is the global batch, split evenly over a multi-GPU job's processes
    most = max((int((spec or {}).get("gpus", 0) or 0) for spec in cfg["families"].values()), default=0)
    tc = cfg.get("train") or {}
    blocks = [("train.hparams", tc.get("hparams") or {})]
    blocks += [(f"train.hparams_by_precision.{p}", b or {}) for p, b in (tc.get("hparams_by_precision") or {}).items()]
    for where, block in blocks:
        for alg, hp in block.items():
            bs = (hp or {}).get("batch_size")
            if most > 1 and alg not in ("ppo", "prime") and isinstance(bs, int):
                bad = sorted({n for n in (int((s or {}).get("gpus", 0) or 0) for s in cfg["families"].values())
                              if n > 1 and bs % n})
                if bad:
                    raise _error(f"{where}.{alg}.batch_size", f"{bs} (the global batch) is not divisible by "
                                 f"the {bad[0]} processes of a family with gpus: {bad[0]}")


def _check_job_memory(cfg: dict[str, Any]) -> None:
    """``gpu.job_memory_gb`` keys name something: ``default``, ``eval``, an algorithm, or
    ``<algorithm>@<precision>`` (a misspelt key would silently fall back to ``default``)."""
    from rlsparsity.grid import ALGORITHMS, PRECISIONS

    for key in ((cfg.get("gpu") or {}).get("job_memory_gb") or {}):
        alg, _, prec = str(key).partition("@")
        if alg in ("default", "eval") and not prec:
            continue
        if alg not in ALGORITHMS or ("@" in str(key) and prec not in PRECISIONS):
            raise _error(f"gpu.job_memory_gb.{key}", f"not 'default', 'eval', an algorithm "
                         f"({', '.join(sorted(ALGORITHMS))}) or '<algorithm>@<precision>' "
                         f"(precisions: {', '.join(PRECISIONS)})")


def check_semantics(cfg: dict[str, Any]) -> None:
    """Cross-field checks the schema cannot express (see the module docstring)."""
    from rlsparsity.tasks import TASKS

    name = cfg["task"]["name"]
    if name not in TASKS:
        close = difflib.get_close_matches(name, list(TASKS), n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise _error("task.name", f"unknown task {name!r}; {hint}known: {', '.join(sorted(TASKS))}")
    _check_block_runs(cfg)
    _check_stage_families(cfg)
    _check_family_paths(cfg)
    _check_sharding(cfg)
    _check_job_memory(cfg)
    check_hparams(cfg)
