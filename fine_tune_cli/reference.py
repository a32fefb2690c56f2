"""The README's recipe reference, generated from the schema (the only home of defaults).

`python -m fine_tune_cli.reference` prints it; `make docs` rewrites the README section;
a test fails when the README and the schema drift apart.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from fine_tune_cli.recipe import Recipe, model_in, models_in

START = "<!-- recipe-reference:start -->"
END = "<!-- recipe-reference:end -->"


def _type_name(annotation: Any) -> str:
    text = str(annotation).replace("typing.", "")
    text = re.sub(r"<class '([^']+)'>", r"\1", text)
    text = re.sub(r"fine_tune_cli\.recipe\.(schema\.)?", "", text)
    return text.replace("NoneType", "null").replace("|", "\\|")


def _default(field: Any) -> str:
    if field.default_factory is not None:
        value = field.default_factory()
        return "" if isinstance(value, BaseModel) else f"`{value}`"
    if field.default is PydanticUndefined:
        return "**required**"
    value = field.default
    if value is None:
        return "`null`"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    return f"`{value}`"


def _rows(model: type[BaseModel], prefix: str = "") -> list[str]:
    rows = []
    for name, field in _fields(model).items():
        dotted = f"{prefix}{name}"
        nested = model_in(field.annotation)
        if nested is not None and nested.__name__ != "StepSpec":
            rows.extend(_rows(_section(field.annotation), dotted + "."))
            continue
        # steps: a list of registry names with parameters
        kind = "list of steps" if nested is not None else _type_name(field.annotation)
        doc = (field.description or "").replace("|", "\\|")
        rows.append(f"| `{dotted}` | {kind} | {_default(field)} | {doc} |")
    return rows


def _section(annotation: Any) -> Any:
    """The section model, or for a discriminated union (optim) the list of its variants."""
    found = models_in(annotation)
    return found[0] if len(found) == 1 else found


def _fields(model: Any) -> dict[str, Any]:
    """A section's fields; for a union of variants every key once, in an order each
    variant's own order agrees with, keys all variants inherit documented by their base."""
    if not isinstance(model, list):
        return dict(model.model_fields)
    base = next(b for b in model[0].__mro__ if all(issubclass(m, b) for m in model))
    orders = [list(m.model_fields) for m in model]
    merged: list[str] = []
    while any(orders):
        # the first key (in variant order) that no variant lists after another pending key
        key = next(o[0] for o in orders if o and not any(o[0] in rest[1:] for rest in orders))
        merged.append(key)
        orders = [[k for k in o if k != key] for o in orders]
    fields = {k: f for m in reversed(model) for k, f in m.model_fields.items()}
    return {k: base.model_fields.get(k) or fields[k] for k in merged}


def _steps() -> list[str]:
    from fine_tune_cli.data.steps import STEPS

    rows = []
    for name in STEPS:
        step = STEPS.get(name)
        params = ", ".join(
            f"`{k}`={_default(f).strip('`') or '-'}" for k, f in step.params.model_fields.items()
        )
        rows.append(f"| `{name}` | {params or '-'} | {step.doc} |")
    return rows


def render() -> str:
    lines = [
        START,
        "| key | type | default | meaning |",
        "|---|---|---|---|",
        *_rows(Recipe),
        "",
        "Pipeline steps (`data.steps`, `data.augment`), written `- name` or"
        " `- name: {param: value}`:",
        "",
        "| step | parameters | what it does |",
        "|---|---|---|",
        *_steps(),
        END,
    ]
    return "\n".join(lines)


def update_readme(path: Path) -> bool:
    text = path.read_text()
    new = re.sub(
        re.escape(START) + r".*?" + re.escape(END), lambda _: render(), text, flags=re.DOTALL
    )
    path.write_text(new)
    return new != text


if __name__ == "__main__":
    if len(sys.argv) > 1:
        changed = update_readme(Path(sys.argv[1]))
        print("updated" if changed else "unchanged")
    else:
        print(render())
