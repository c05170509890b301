"""Every error the library raises derives from SdOvOptError: a scan of the package's raise statements."""

from __future__ import annotations

import ast
import builtins
from pathlib import Path

import sd_ovopt
from sd_ovopt import errors

PACKAGE = Path(sd_ovopt.__file__).parent
BUILTIN_ERRORS = {
    name
    for name in dir(builtins)
    if isinstance(getattr(builtins, name), type) and issubclass(getattr(builtins, name), BaseException)
}
# Raises of builtins that are not errors reaching a user: the module __getattr__ protocol, and an
# internal signal caught in the same module.
ALLOWED = {
    ("_lazy.py", "AttributeError"),
    ("evaluation/memory.py", "OSError"),
}


def _raised_names(tree: ast.AST) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Raise) and node.exc is not None:
            target = node.exc.func if isinstance(node.exc, ast.Call) else node.exc
            if isinstance(target, ast.Name):
                found.append((node.lineno, target.id))
    return found


def test_the_package_raises_no_plain_builtin_errors():
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE).as_posix()
        for line, name in _raised_names(ast.parse(path.read_text(encoding="utf-8"))):
            if name in BUILTIN_ERRORS and (rel, name) not in ALLOWED:
                offenders.append(f"{rel}:{line} raises {name}")
    assert not offenders, "raise an sd_ovopt.errors class instead:\n" + "\n".join(offenders)


def test_every_library_error_is_also_a_builtin_error():
    for name in errors.__all__:
        cls = getattr(errors, name)
        assert issubclass(cls, errors.SdOvOptError), name
        if cls is not errors.SdOvOptError:
            assert any(base.__module__ == "builtins" and base is not Exception for base in cls.__mro__[1:]), (
                name
            )


def test_the_scan_finds_a_plain_raise():
    tree = ast.parse("def f():\n    raise ValueError('x')\n")
    assert _raised_names(tree) == [(2, "ValueError")]
