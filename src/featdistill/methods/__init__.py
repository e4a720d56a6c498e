"""Distillation recipes: one file per method, each registered in :data:`METHODS`."""

from featdistill.methods import at, baseline, dist, dkd, fitnet, kd  # noqa: F401  (registration)
from featdistill.methods.base import METHODS, Method, build_method, list_methods, register_method

__all__ = ["METHODS", "Method", "build_method", "list_methods", "register_method"]
