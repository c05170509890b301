"""Optimizations as plug-in methods: one protocol (:class:`Method`), one registry.

A method is a subpackage with a :class:`Method` subclass and one :func:`register_method` call; the export,
the recipe, :class:`sd_ovopt.SdOvOptPipeline`, the CLI and the benchmark loop over registered methods.
"""

from sd_ovopt.methods.base import ExportShape, Method, MethodRecord, RecipeSettings, UNetConversion
from sd_ovopt.methods.registry import (
    get_method,
    method_for_config,
    methods_in_order,
    register_method,
    registered_methods,
    unregister_method,
)

__all__ = [
    "ExportShape",
    "Method",
    "MethodRecord",
    "RecipeSettings",
    "UNetConversion",
    "get_method",
    "method_for_config",
    "methods_in_order",
    "register_method",
    "registered_methods",
    "unregister_method",
]
