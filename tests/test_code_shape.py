"""Code shape: no function in sd_ovopt/ is longer than 60 lines.

A long procedure reads as named steps (diffusers' ``__call__``, ``train_qat``'s ``_QATRun``), so a function
over the limit is split; there are no exceptions. A function's lines count from ``def`` to its last line,
as ``ast`` gives them, less its docstring (decorators not counted either): documenting a function never
forces it to be split.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "sd_ovopt"
MAX_LINES = 60


def _docstring_lines(function: ast.AST) -> int:
    first = function.body[0] if function.body else None  # type: ignore[attr-defined]
    if (
        isinstance(first, ast.Expr)
        and isinstance(first.value, ast.Constant)
        and isinstance(first.value.value, str)
    ):
        return first.end_lineno - first.lineno + 1  # type: ignore[operator]
    return 0


def function_lengths(source: str) -> dict[str, int]:
    """Every function and method of a module (nested ones too) by qualified name, with its line count."""
    lengths: dict[str, int] = {}

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                name = f"{prefix}{child.name}"
                if not isinstance(child, ast.ClassDef):
                    lines = child.end_lineno - child.lineno + 1  # type: ignore[operator]
                    lengths[name] = lines - _docstring_lines(child)
                visit(child, f"{name}.")
            else:
                visit(child, prefix)

    visit(ast.parse(source), "")
    return lengths


def test_the_count_covers_methods_and_nested_functions_without_their_docstrings():
    source = 'class A:\n    def f(self):\n        """Doc.\n\n        More."""\n\n        def g():\n            pass\n'
    assert function_lengths(source) == {"A.f": 4, "A.f.g": 2}


def test_no_function_in_the_package_is_longer_than_60_lines():
    too_long = []
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(PACKAGE).as_posix()
        for name, lines in function_lengths(path.read_text(encoding="utf-8")).items():
            if lines > MAX_LINES:
                too_long.append(f"{relative}::{name} ({lines} lines)")
    assert not too_long, f"functions over {MAX_LINES} lines; split them into named steps: {too_long}"


def test_no_private_name_is_imported_from_another_subpackage():
    """A name another subpackage needs is public in its module (``_``-prefixed modules, the ground floor
    such as ``sd_ovopt._fs``, are shared by all and may be imported from anywhere)."""
    crossing = []
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE).parts
        here = parts[0] if len(parts) > 1 else ""
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not (isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("sd_ovopt.")):
                continue
            target = node.module.split(".")
            there = target[1] if len(target) > 2 else ""
            private = [
                a.name for a in node.names if a.name.startswith("_") and not target[-1].startswith("_")
            ]
            if private and there != here:
                crossing.append(f"{path.relative_to(PACKAGE)}: {node.module}.{private}")
    assert not crossing, crossing


def test_no_function_forwards_its_locals():
    """``f(**locals())`` hides which arguments a call takes: every call names them."""
    found = [
        str(path.relative_to(PACKAGE))
        for path in sorted(PACKAGE.rglob("*.py"))
        if "**locals()" in path.read_text(encoding="utf-8") or "**vars()" in path.read_text(encoding="utf-8")
    ]
    assert not found, found


#: The package's layers, bottom first: a module imports only from its own layer or below (imports inside
#: functions included). Methods are below the export, which names none of them.
LAYERS = (
    ("errors", "_lazy", "_hardware", "_nncf", "_config", "_validation", "_fs", "_precision", "_loading",
     "_convert", "_seeding", "testing"),
    ("methods",),
    ("tome", "deepcache", "quantization"),
    ("export",),
    ("pipelines",),
    ("recipes",),
    ("evaluation",),
    ("reference",),
    ("cli", "__init__", "__main__"),
)  # fmt: skip


def _layer(module: str) -> int:
    top = module.split(".")[1] if "." in module else "__init__"
    for level, names in enumerate(LAYERS):
        if top in names:
            return level
    raise AssertionError(f"sd_ovopt.{top} is in no layer of LAYERS; add it where it belongs")


def _imports(path: Path) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("sd_ovopt"):
            found.append(node.module)
        elif isinstance(node, ast.Import):
            found += [a.name for a in node.names if a.name.startswith("sd_ovopt")]
    return found


def test_every_import_points_down_the_layers():
    upward = []
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(PACKAGE)
        here = "sd_ovopt." + ".".join(relative.with_suffix("").parts)
        for target in _imports(path):
            if _layer(target) > _layer(here):
                upward.append(f"{relative} imports {target}")
    assert not upward, upward


def test_export_pipeline_and_benchmark_name_no_method():
    """They loop over registered methods (sd_ovopt.methods); what a method is lives in its own folder."""
    for name in (
        "export/pipeline.py",
        "pipelines/ov_pipeline.py",
        "evaluation/benchmark.py",
        "recipes/optimize.py",
    ):
        code = (PACKAGE / name).read_text(encoding="utf-8")
        tree = ast.parse(code)
        docstrings = {
            node.body[0].value.value
            for node in ast.walk(tree)
            if isinstance(node, (ast.Module, ast.FunctionDef, ast.ClassDef, ast.AsyncFunctionDef))
            and node.body and isinstance(node.body[0], ast.Expr) and isinstance(node.body[0].value, ast.Constant)
        }  # fmt: skip
        for text in docstrings:
            code = code.replace(text, "")
        assert not [w for w in ("tome", "deepcache", "step_caching") if w in code.lower()], name
