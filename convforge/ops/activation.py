"""Element-wise activations fused into convolution epilogues."""

from __future__ import annotations

from tvm import te, tirx

#: Names accepted by every ``activation=`` argument.
ACTIVATIONS = ("relu", "silu", "sigmoid", "tanh")


def check_activation(activation: str | None) -> None:
    if activation is not None and activation not in ACTIVATIONS:
        raise ValueError(f"activation must be None or one of {ACTIVATIONS}, got {activation!r}")


def activate(value: tirx.PrimExpr, activation: str | None, dtype: str) -> tirx.PrimExpr:
    """Apply ``activation`` to one scalar expression of ``dtype`` (``None``: identity)."""
    if activation is None:
        return value
    if activation == "relu":
        return tirx.max(value, tirx.const(0, dtype))
    if activation == "sigmoid":
        return te.sigmoid(value)
    if activation == "silu":
        return value * te.sigmoid(value)
    if activation == "tanh":
        return te.tanh(value)
    raise ValueError(f"activation must be None or one of {ACTIVATIONS}, got {activation!r}")
