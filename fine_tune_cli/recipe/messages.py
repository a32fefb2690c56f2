"""Recipe problems as one line each: `dotted.key: what is wrong`, with "did you mean"
hints for unknown keys. The one place that turns pydantic errors (and the registry checks'
errors, which take the same shape) into the text users see."""

from __future__ import annotations

import re
from typing import Any

from pydantic import BaseModel

from fine_tune_cli.recipe.schema import model_in
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
    """Field names of the (nested) model that holds the key at `loc`."""
    current: Any = model
    for part in loc[:-1]:
        if isinstance(part, int):
            continue
        fields = getattr(current, "model_fields", {})
        if part not in fields:
            return []
        current = model_in(fields[part].annotation)
        if current is None:
            return []
    return list(getattr(current, "model_fields", {}))


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
