"""Code shape: no function in sd_ovopt/ is longer than 60 lines.

A long procedure reads as named steps (diffusers' ``__call__``, ``train_qat``'s ``_QATRun``), so a function
over the limit is split; there are no exceptions. A function's lines count from ``def`` to its last line,
as ``ast`` gives them, less its docstring (decorators not counted either): documenting a function never
forces it to be split.
"""

from __future__ import annotations

import ast
import io
import re
import tokenize
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
    ("errors", "_lazy", "_hardware", "_nncf", "_config", "_validation", "_fs", "_compile_cache", "_precision",
     "_loading", "_convert", "_seeding", "_schedulers", "_prompts", "testing"),
    ("methods",),
    ("tome", "deepcache", "quantization", "lora", "vae"),
    ("export",),
    ("pipelines",),
    ("recipes", "distill"),
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


def _reason_lines(source: str) -> set[int]:
    """The lines that carry a comment saying something (a bare ``noqa`` or ``type:`` pragma says nothing)."""
    lines = set()
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type == tokenize.COMMENT:
            text = re.sub(r"(noqa(:\s*[A-Z]+\d+(,\s*[A-Z]+\d+)*)?|type:\s*ignore\S*)", "", token.string)
            if text.strip("#- \t"):
                lines.add(token.start[0])
    return lines


def _module_names(node: ast.Import | ast.ImportFrom) -> list[str]:
    return [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]


def lazy_import_problems(source: str) -> list[str]:
    """An import inside a function must have a reason: a module kept light (the CLI, the package) or an
    optional dependency. So it is refused when the module is imported at the file's top anyway, and each
    function's imports carry a comment (on an import's lines or the line above one) saying why."""
    tree = ast.parse(source)
    top = {
        name
        for node in tree.body
        if isinstance(node, (ast.Import, ast.ImportFrom))
        for name in _module_names(node)
    }
    reasons = _reason_lines(source)
    problems = []

    def visit(node: ast.AST, function: ast.AST | None) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                imports = [n for n in ast.walk(child) if isinstance(n, (ast.Import, ast.ImportFrom))]
                inner = {
                    n
                    for f in ast.walk(child)
                    if f is not child and isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))
                    for n in ast.walk(f)
                }
                own = [n for n in imports if n not in inner]
                for n in own:
                    again = [m for m in _module_names(n) if m in top]
                    if again:
                        problems.append(
                            f"{child.name}:{n.lineno} imports {again} again (imported at the top)"
                        )
                if own and not any(reasons & set(range(n.lineno - 1, n.end_lineno + 1)) for n in own):
                    problems.append(
                        f"{child.name}:{own[0].lineno} imports inside the function without saying why"
                    )
                visit(child, child)
            else:
                visit(child, function)

    visit(tree, None)
    return problems


def test_the_import_check_refuses_a_repeated_or_unexplained_lazy_import():
    assert lazy_import_problems("import os\n\ndef f():\n    import os  # light\n") == [
        "f:4 imports ['os'] again (imported at the top)"
    ]
    assert lazy_import_problems("def f():\n    import torch  # noqa: F401\n") == [
        "f:2 imports inside the function without saying why"
    ]
    assert (
        lazy_import_problems("def f():\n    # torch is heavy: --help stays quick\n    import torch\n") == []
    )
    assert lazy_import_problems("def f():\n    def g():\n        import torch  # optional\n") == []


def test_an_import_inside_a_function_says_why_and_is_not_at_the_top_too():
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(PACKAGE).as_posix()
        problems = lazy_import_problems(path.read_text(encoding="utf-8"))
        found += [f"{relative}::{p}" for p in problems]
    assert not found, found
