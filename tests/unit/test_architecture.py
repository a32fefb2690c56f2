"""Architecture rules of issue 11, checked on the source (ast): nothing outside tasks/
asks which task or modality a run is; no import cycles among module-level imports; no
function over 100 lines in engine/ and tasks/."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "fine_tune_cli"
MAX_FUNCTION_LINES = 100


def modules() -> dict[str, Path]:
    """Dotted module name -> file, for every module of the package."""
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def task_words() -> set[str]:
    """Every task name and recipe `model.task` value the registry knows."""
    from fine_tune_cli.tasks import TASKS

    return {n for n in TASKS} | {TASKS.get(n).recipe_task for n in TASKS}


# Attributes and names whose comparison means "which task / modality is this?"
QUESTION_NAMES = {"task", "modality", "recipe_task"}


def _asks_task(node: ast.Compare, words: set[str]) -> str | None:
    operands = [node.left, *node.comparators]
    for op in operands:
        if isinstance(op, ast.Constant) and op.value in words:
            return f"compares with the task name {op.value!r}"
        if isinstance(op, ast.Tuple | ast.List | ast.Set) and any(
            isinstance(e, ast.Constant) and e.value in words for e in op.elts
        ):
            return "tests membership in task names"
        if isinstance(op, ast.Attribute) and op.attr in QUESTION_NAMES:
            return f"compares .{op.attr}"
        if (
            isinstance(op, ast.Attribute)
            and op.attr == "tokenizer_kind"
            and any(isinstance(o, ast.Constant) and o.value is None for o in operands)
        ):
            return "tells images from text by tokenizer_kind None"
        if isinstance(op, ast.Name) and op.id in QUESTION_NAMES:
            return f"compares {op.id}"
        if isinstance(op, ast.Call) and getattr(op.func, "id", None) == "encoder_name":
            return "compares encoder_name(...)"
    if (
        any(isinstance(o, ast.In | ast.NotIn) for o in node.ops)
        and isinstance(node.left, ast.Constant)
        and node.left.value == "images"
        and "manifest" in ast.unparse(node.comparators[0])
    ):
        return "guesses the modality from 'images' in the prepared manifest"
    return None


def find_task_questions(tree: ast.AST, words: set[str]) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Compare):
            why = _asks_task(node, words)
            if why:
                found.append((node.lineno, why))
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) in ("hasattr", "getattr"):
            args = node.args
            if len(args) >= 2 and isinstance(args[0], ast.Name) and args[0].id == "task":
                found.append((node.lineno, "probes a task capability with hasattr/getattr"))
    return found


def test_the_finder_catches_each_idiom() -> None:
    """The rule below is only as good as this detector: every idiom issue 11 counted."""
    words = {"classification", "mlm", "clm"}
    bad = [
        'if recipe.model.task == "classification": pass',
        'if task != "mlm": pass',
        'if name in ("clm", "mlm"): pass',
        "if FAMILIES.get(f).tokenizer_kind is None: pass",
        'if "images" in prepared.manifest: pass',
        'if encoder_name(recipe) == "image": pass',
        'if hasattr(task, "samples"): pass',
        'if kind.modality == "image": pass',
    ]
    for source in bad:
        assert find_task_questions(ast.parse(source), words), source
    good = [
        'if fmt == "image_manifest": pass',
        "if task.needs_labels: pass",
        "x = task.name",
        'if "images" not in arrays: pass',  # an npz file's arrays, not the modality
        'if family.tokenizer_kind == "bpe": pass',  # a tokenizer rule, not the modality
    ]
    for source in good:
        assert not find_task_questions(ast.parse(source), words), source


def test_nothing_outside_tasks_asks_which_task_or_modality() -> None:
    words = task_words()
    assert {"classification", "mlm", "mlm_nsp", "clm", "mim"} <= words
    problems = []
    for name, path in modules().items():
        if name == "fine_tune_cli.tasks" or name.startswith("fine_tune_cli.tasks."):
            continue
        for line, why in find_task_questions(ast.parse(path.read_text()), words):
            problems.append(f"{path.relative_to(PACKAGE.parent)}:{line}: {why}")
    assert not problems, "ask the task (fine_tune_cli.tasks.task_for) instead:\n" + "\n".join(
        problems
    )


def _module_level_imports(tree: ast.Module) -> list[ast.Import | ast.ImportFrom]:
    """Imports that run when the module is imported: top level, inside try/if blocks,
    but not under `if TYPE_CHECKING:` and not inside functions or classes."""
    out: list[ast.Import | ast.ImportFrom] = []

    def walk(body: list[ast.stmt]) -> None:
        for stmt in body:
            if isinstance(stmt, ast.Import | ast.ImportFrom):
                out.append(stmt)
            elif isinstance(stmt, ast.If):
                if "TYPE_CHECKING" not in ast.unparse(stmt.test):
                    walk(stmt.body)
                walk(stmt.orelse)
            elif isinstance(stmt, ast.Try):
                walk(stmt.body)
                for handler in stmt.handlers:
                    walk(handler.body)
                walk(stmt.orelse)
                walk(stmt.finalbody)

    walk(tree.body)
    return out


def import_graph() -> dict[str, set[str]]:
    """module -> package modules it imports at module level (a `from pkg import sub` of a
    submodule counts as an import of the submodule)."""
    mods = modules()
    graph: dict[str, set[str]] = {name: set() for name in mods}
    for name, path in mods.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for stmt in _module_level_imports(ast.parse(path.read_text())):
            if isinstance(stmt, ast.Import):
                targets = [alias.name for alias in stmt.names]
            else:
                base = stmt.module or ""
                if stmt.level:
                    parent = package.split(".")[: len(package.split(".")) - stmt.level + 1]
                    base = ".".join([*parent, base] if base else parent)
                targets = []
                for alias in stmt.names:
                    sub = f"{base}.{alias.name}"
                    targets.append(sub if sub in mods else base)
            graph[name] |= {t for t in targets if t in mods and t != name}
    return graph


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []
    counter = 0

    def visit(v: str) -> None:
        nonlocal counter
        index[v] = low[v] = counter
        counter += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return cycles


def test_the_cycle_finder_finds_a_plugin_circle() -> None:
    graph = {"base": {"plugin"}, "plugin": {"base"}, "cli": {"base"}}
    assert find_cycles(graph) == [["base", "plugin"]]
    assert find_cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles_among_module_level_imports() -> None:
    graph = import_graph()
    assert "fine_tune_cli.tasks.classification" in graph["fine_tune_cli.tasks"]
    cycles = find_cycles(graph)
    assert not cycles, "import cycles:\n" + "\n".join(" <-> ".join(c) for c in cycles)


@pytest.mark.parametrize("folder", ["engine", "tasks"])
def test_no_function_over_100_lines(folder: str) -> None:
    long = []
    for path in sorted((PACKAGE / folder).rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    long.append(f"{path.name}:{node.lineno} {node.name}: {lines} lines")
    assert not long, "split these functions:\n" + "\n".join(long)


def test_loading_a_recipe_imports_neither_torch_nor_sklearn() -> None:
    """`ftc recipes show`, `--dry-run` checks and the recipe half of every command ask the
    registered tasks for their rules; importing torch and scikit-learn for that took ~5 s."""
    import subprocess
    import sys

    code = (
        "import sys; from fine_tune_cli.recipe import load_recipe; load_recipe('demo');"
        "from fine_tune_cli.tasks import TASKS, task_for;"
        "heavy = [m for m in ('torch', 'sklearn', 'transformers') if m in sys.modules];"
        "print(','.join(heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "", f"loading a recipe imported {out.stdout.strip()}"
