"""Recipe problems as one line each: `dotted.key: what is wrong`, with "did you mean"
hints for unknown keys. The one place that turns pydantic errors (and the registry checks'
errors, which take the same shape) into the text users see."""

from __future__ import annotations

import re
from typing import Any

from pydantic import BaseModel

from fine_tune_cli.recipe.schema import model_in, models_in, variants_of
from fine_tune_cli.registry import did_you_mean


def dotted_key(loc: tuple[Any, ...]) -> str:
    """`("data", "steps", 1)` -> `data.steps[1]`."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out


def origin_of(dotted: str, origins: dict[str, str], default: str) -> str:
    """The file (or override) that set `dotted` or its closest parent key."""
    key = re.sub(r"\[\d+\]", "", dotted)
    while key:
        if key in origins:
            return origins[key]
        key = key.rpartition(".")[0]
    return default


def fields_at(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    """Field names of the (nested) model that holds the key at `loc`; of every variant
    when that is a discriminated union (the keys the section takes at all)."""
    current: list[Any] = [model]
    for part in loc[:-1]:
        if isinstance(part, int):
            continue
        fields = {k: f for m in current for k, f in m.model_fields.items()}
        if part not in fields:
            return []
        current = models_in(fields[part].annotation)
        if not current:
            return []
    return list(dict.fromkeys(k for m in current for k in m.model_fields))


def untag(errors: list[dict[str, Any]], model: type[BaseModel]) -> list[dict[str, Any]]:
    """pydantic's errors with the variant tags of discriminated unions taken out of their
    `loc` (`optim.sgd.eps` -> `optim.eps`), and a variant's unknown keys that another
    variant takes worded as they always were: one line per section, `betas, eps: not used
    by optimizer 'sgd' (it takes: ...)`, left out when the section has other errors."""
    out: list[dict[str, Any]] = []
    unused: dict[tuple[Any, ...], dict[str, Any]] = {}
    for err in errors:
        loc, variant = _untagged_loc(tuple(err["loc"]), model)
        err = {**err, "loc": loc}
        if variant is not None and err["type"] == "extra_forbidden":
            section, tag, kind, variants = variant
            key = loc[-1]
            elsewhere = any(key in m.model_fields for m in variants.values())
            if len(loc) == len(section) + 1 and elsewhere:
                takes = ", ".join(sorted(variants[tag].model_fields))
                entry = unused.setdefault(section, {"keys": [], "at": len(out)})
                entry["keys"].append(key)
                entry["msg"] = f"not used by {kind} '{tag}' (it takes: {takes})"
                continue
        out.append(err)
    for section, entry in sorted(unused.items(), key=lambda kv: -kv[1]["at"]):
        if any(tuple(e["loc"])[: len(section)] == section for e in out):
            continue  # as before: which keys a variant takes is checked once its fields are valid
        msg = f"{', '.join(sorted(entry['keys']))}: {entry['msg']}"
        out.insert(entry["at"], {"type": "value_error", "loc": section, "msg": msg})
    return out


def _untagged_loc(
    loc: tuple[Any, ...], model: type[BaseModel]
) -> tuple[tuple[Any, ...], tuple[tuple[Any, ...], str, str, dict[str, Any]] | None]:
    """`loc` without union tags, and the innermost variant it went through:
    (section loc, tag, what the variants are called, variants by tag)."""
    out: list[Any] = []
    variant = None
    current: Any = model
    parts = list(loc)
    while parts:
        part = parts.pop(0)
        out.append(part)
        if isinstance(part, int) or current is None:
            continue
        field = current.model_fields.get(part)
        if field is None:
            current = None
            continue
        discriminator, variants = variants_of(field)
        if variants and parts and parts[0] in variants:
            tag = parts.pop(0)
            kind = (discriminator.custom_error_context or {}).get("kind", "variant")
            variant = (tuple(out), tag, kind, variants)
            current = variants[tag]
        else:
            current = model_in(field.annotation)
    return tuple(out), variant


def schema_position(model: type[BaseModel], loc: tuple[Any, ...]) -> tuple[int, ...]:
    """Where `loc` comes in the schema's field order (unknown keys after the known ones):
    registry problems are listed among the schema's in the order validation meets them."""
    position: list[int] = []
    current: Any = model
    for part in loc:
        if isinstance(part, int):
            position.append(part)
            continue
        fields = list(getattr(current, "model_fields", {}))
        if part not in fields:
            position.append(len(fields))
            current = None
            continue
        position.append(fields.index(part))
        current = model_in(current.model_fields[part].annotation)
    return tuple(position)


def describe_error(err: dict[str, Any], model: type[BaseModel], prefix: str = "") -> str:
    """One pydantic error (or a registry check's error of the same shape) as one line."""
    loc = tuple(err["loc"])
    dotted = prefix + dotted_key(loc)
    kind = err["type"]
    value = err.get("input")
    if kind == "extra_forbidden":
        hint = did_you_mean(str(loc[-1]), fields_at(model, loc))
        return f"{dotted}: unknown key{hint}"
    if kind == "missing":
        return f"{dotted}: required key is missing"
    if kind == "unknown_variant":
        return _unknown_variant(err, model, dotted)
    msg = str(err["msg"]).removeprefix("Value error, ").removeprefix("Assertion failed, ")
    if kind == "value_error":
        # Our own validators prefix the sub-key ("task: ...") when the problem is a field.
        sub, sep, rest = msg.partition(": ")
        if sep and re.fullmatch(r"[a-z_]+(, [a-z_]+)*", sub):
            return f"{dotted + '.' if dotted else ''}{sub}: {rest}"
        return f"{dotted or 'recipe'}: {msg}"
    msg = msg.replace("Input should be", "expected")
    shown = repr(value) if not isinstance(value, dict | list) else type(value).__name__
    return f"{dotted}: {msg} (got {shown})"


def _unknown_variant(err: dict[str, Any], model: type[BaseModel], dotted: str) -> str:
    """A discriminated-union section whose tag names no variant, worded like the registry
    check it replaced: `optim.name: unknown optimizer 'x'; did you mean ...? (choose ...)`."""
    ctx, value = err.get("ctx") or {}, err.get("input")
    if not isinstance(value, dict):
        shown = repr(value) if not isinstance(value, list) else "list"
        return (
            f"{dotted}: expected a valid dictionary or instance of {ctx['section']} (got {shown})"
        )
    tag = value.get(ctx["key"])
    if not isinstance(tag, str):
        shown = repr(tag) if not isinstance(tag, dict | list) else type(tag).__name__
        return f"{dotted}.{ctx['key']}: expected a valid string (got {shown})"
    field: Any = None
    current: Any = model
    for part in err["loc"]:
        if isinstance(part, str) and current is not None and part in current.model_fields:
            field = current.model_fields[part]
            current = model_in(field.annotation)
    tags = sorted(variants_of(field)[1]) if field is not None else []
    return (
        f"{dotted}.{ctx['key']}: unknown {ctx['kind']} '{tag}'{did_you_mean(tag, tags)}"
        f" (choose one of: {', '.join(tags)})"
    )
