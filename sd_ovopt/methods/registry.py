"""The registry of methods: one registration per method, looked up by name or by config type.

The methods that ship with sd_ovopt register when their module is imported; the registry imports them on
first use from a fixed table (so reading a folder never imports a module named by the folder). A method
of your own registers with :func:`register_method`.
"""

from __future__ import annotations

import functools
import importlib
from typing import Any

from sd_ovopt.errors import InvalidConfigError, UnsupportedModelError
from sd_ovopt.methods.base import Method

__all__ = [
    "get_method",
    "method_for_config",
    "methods_in_order",
    "register_method",
    "registered_methods",
    "unregister_method",
]

#: The methods shipped with sd_ovopt: registry name -> the module that registers it.
_BUILTIN = {
    "lora": "sd_ovopt.lora.method",
    "tome": "sd_ovopt.tome.method",
    "step_caching": "sd_ovopt.deepcache.method",
    "int8": "sd_ovopt.quantization.method",
}
_METHODS: dict[str, Method] = {}


@functools.cache
def _load_builtins() -> None:
    """Import the built-in methods once (each registers itself on import)."""
    # The built-in methods import torch and diffusers; ``import sd_ovopt`` stays lean without them.
    for module in _BUILTIN.values():
        importlib.import_module(module)


def register_method(method: Method, *, replace: bool = False) -> Method:
    """Register ``method`` under ``method.name``; return it.

    Example:
        >>> from sd_ovopt.methods import Method, register_method  # doctest: +SKIP
        >>> register_method(MyMethod())  # doctest: +SKIP
    """
    if not isinstance(method, Method):
        raise InvalidConfigError(f"register_method needs a Method instance, got {type(method).__name__}.")
    name = method.name
    if not (isinstance(name, str) and name.isidentifier() and name.islower()):
        raise InvalidConfigError(f"{type(method).__name__}.name={name!r}; use a lowercase identifier.")
    if not isinstance(method.config_class, type) or method.config_class is object:
        raise InvalidConfigError(f"{type(method).__name__}.config_class must be the method's config type.")
    taken = _METHODS.get(name)
    if taken is not None and not replace and type(taken) is not type(method):
        raise InvalidConfigError(
            f"a method named {name!r} is already registered ({type(taken).__name__}); pick another name or "
            "pass replace=True."
        )
    clash = next(
        (m for m in _METHODS.values() if m.config_class is method.config_class and m.name != name), None
    )
    if clash is not None:
        raise InvalidConfigError(
            f"{method.config_class.__name__} already belongs to the method {clash.name!r}; a config type "
            "names one method."
        )
    _METHODS[name] = method
    return method


def unregister_method(name: str) -> None:
    """Remove a registered method (for tests and plug-ins that unload)."""
    _METHODS.pop(name, None)


def registered_methods() -> dict[str, Method]:
    """Every registered method by name, built-ins included, in rank order."""
    _load_builtins()
    return {m.name: m for m in sorted(_METHODS.values(), key=lambda m: (m.rank, m.name))}


def get_method(name: str, *, source: str = "") -> Method:
    """The method registered as ``name``; ``UnsupportedModelError`` naming the known ones otherwise."""
    methods = registered_methods()
    if name not in methods:
        where = f"{source}: " if source else ""
        raise UnsupportedModelError(
            f"{where}the method {name!r} is not registered (known: {sorted(methods)}). A folder that uses "
            "another library's method loads after that library registers it (sd_ovopt.methods.register_method)."
        )
    return methods[name]


def method_for_config(config: Any) -> Method:
    """The method whose config type ``config`` is."""
    methods = registered_methods().values()
    for method in methods:
        if type(config) is method.config_class:
            return method
    known = sorted(m.config_class.__name__ for m in methods)
    raise InvalidConfigError(
        f"{type(config).__name__} is not the config of any registered method; pass one of {known}."
    )


def methods_in_order(configs: Any) -> list[tuple[Method, Any]]:
    """``(method, config)`` pairs for a sequence of method configs, in rank order; each method once."""
    if configs is None:
        return []
    if not isinstance(configs, (list, tuple)):
        raise InvalidConfigError(
            f"methods={configs!r}; pass a list of method configs, e.g. [ToMeConfig(ratio=0.4)]."
        )
    pairs: dict[str, tuple[Method, Any]] = {}
    for config in configs:
        method = method_for_config(config)
        if method.name in pairs and pairs[method.name][1] != config:
            raise InvalidConfigError(f"methods holds two {type(config).__name__}s; pass one per method.")
        pairs[method.name] = (method, config)
    return sorted(pairs.values(), key=lambda pair: (pair[0].rank, pair[0].name))
