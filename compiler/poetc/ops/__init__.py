"""Op registry: importing this package registers every op family."""

from . import eltwise, linear, loss, optim, relu  # noqa: F401  (registration side effects)
from .base import REGISTRY, OpDef, get, register

__all__ = ["REGISTRY", "OpDef", "get", "register"]
