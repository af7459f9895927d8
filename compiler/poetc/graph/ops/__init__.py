"""Op registry: importing this package registers every op family."""

from . import (  # noqa: F401  (registration side effects)
    act,
    bcast,
    bn,
    conv,
    eltwise,
    layernorm,
    layout,
    linear,
    loss,
    matmul,
    optim,
    pool,
    quant,
    relu,
    softmax,
)
from .base import REGISTRY, OpDef, get, register

__all__ = ["REGISTRY", "OpDef", "get", "register"]
