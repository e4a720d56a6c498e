"""Distillation recipes: one file per method, each registered in :data:`METHODS`."""

from featdistill.methods import (  # noqa: F401  (registration)
    at,
    baseline,
    cka,
    collaborative,
    compose,
    dist,
    distplus,
    diswot,
    dkd,
    dmae,
    fitnet,
    kd,
    kdoct,
    lelp,
    lsskd,
    mealv2,
    nd,
    nkd,
    ofa,
    output,
    pad,
    pela,
    sskd,
    tfkd,
)
from featdistill.methods.base import METHODS, Method, build_method, list_methods, register_method

__all__ = ["METHODS", "Method", "build_method", "list_methods", "register_method"]
