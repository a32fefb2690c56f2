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

from fine_tune_cli.recipe import Recipe, _model_in

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
    for name, field in model.model_fields.items():
        dotted = f"{prefix}{name}"
        nested = _model_in(field.annotation)
        if nested is not None and nested.__name__ != "StepSpec":
            rows.extend(_rows(nested, dotted + "."))
            continue
        # steps: a list of registry names with parameters
        kind = "list of steps" if nested is not None else _type_name(field.annotation)
        doc = (field.description or "").replace("|", "\\|")
        rows.append(f"| `{dotted}` | {kind} | {_default(field)} | {doc} |")
    return rows


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
