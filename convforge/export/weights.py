"""A compiled model's weights kept out of its VM executable, beside its machine code.

TVM's VM stores a model's constants in its executable, which ``export_library`` serializes
into the shared library: about 33 MB/s on a loaded 2-core machine (190 MB of ResNet-50
weights, transformed Winograd weights included: 5.8 s, where numpy writes them in 0.2 s),
then the linker copies them (1-2 s) and every load deserializes them again (0.4-0.8 s). So
:func:`lift_weights` turns the model's weights (constants of at least
:data:`WEIGHT_MIN_BYTES`) into parameters of its entry functions after the relax pipeline,
and the library carries them as a section appended after the linked image (which the
dynamic loader ignores, as it ignores the integrity trailer after it)::

    <ELF image> <padding> <weight 0> <padding> <weight 1> ... <JSON index>
    <index length: 8 bytes, little-endian> <MAGIC: 16 bytes> [<convforge trailer>]

Each weight starts at a file offset that is a multiple of :data:`ALIGNMENT`; the JSON index
lists ``[offset, dtype, shape]`` per weight in parameter order. :func:`read_weights` maps
the section (``mmap``, copy-on-write: nothing is read until a kernel touches it) and returns
the weights as numpy views; an entry function is called with its inputs, then every weight.
A library without the section (compiled for a GPU, or written before this format) holds its
constants in its executable and takes only its inputs.
"""

from __future__ import annotations

import hashlib
import json
import mmap
import os
import struct
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import tvm

#: Constants of at least this many bytes are weights (smaller ones, such as shapes and
#: scalars, stay in the executable).
WEIGHT_MIN_BYTES = 4096
#: File alignment of every weight (what TVM's kernels assume of a tensor's data).
ALIGNMENT = 64
#: Last bytes of the weights section.
MAGIC = b"CONVFORGE-WTS\x00v1"
_LENGTH = struct.Struct("<Q")


def lift_weights(mod: tvm.IRModule) -> tuple[tvm.IRModule, list[np.ndarray]]:
    """``mod`` (after the relax pipeline) with its weights as parameters, and the weights in
    parameter order.

    A constant of at least :data:`WEIGHT_MIN_BYTES` in a relax function reachable from an
    entry function (one with a ``num_input`` attribute: ``main`` and the batch buckets'
    entries) becomes a parameter. Every entry function takes all the weights after its
    inputs, in the order returned (equal weights, e.g. of two batch buckets, once); a helper
    function (a Winograd kernel's finite-or-direct choice) takes those it and its callees
    read, passed by its callers. Functions no entry reaches (the model description) keep
    their constants."""
    import tvm
    from tvm import relax

    functions = {g: f for g, f in mod.functions.items() if isinstance(f, relax.Function)}
    by_name = {g.name_hint: g for g in functions}
    entries = [g for g, f in functions.items() if f.attrs is not None and "num_input" in f.attrs]
    weights: list = []  # the Constant of each weight
    index: dict[tuple, int] = {}

    met: dict = {}  # tensor -> its weight's index or None: a tensor met again is not hashed

    def weight_of(const: Any) -> int | None:
        value = const.value
        if not hasattr(value, "numpy"):
            return None
        if value in met:
            return met[value]
        try:
            array = np.from_dlpack(value)  # the constant's own memory (CPU), not a copy
        except (TypeError, ValueError, BufferError, RuntimeError):  # a dtype numpy lacks
            array = value.numpy()
        found = None
        if array.nbytes >= WEIGHT_MIN_BYTES:
            data = np.ascontiguousarray(array).reshape(-1).view(np.uint8)
            key = (str(array.dtype), array.shape, hashlib.sha256(data).digest())
            if key not in index:
                index[key] = len(weights)
                weights.append(const)
            found = index[key]
        met[value] = found
        return found

    own: dict = {}
    callees: dict = {}
    order: list = []  # callees before their callers

    def scan(gvar: Any, path: tuple = ()) -> None:
        if gvar in own:
            return
        if gvar in path:
            raise ValueError(f"relax function {gvar.name_hint} calls itself")
        found, calls = set(), []

        def visit(expr: Any) -> None:
            if isinstance(expr, tvm.ir.expr.Constant):
                i = weight_of(expr)
                if i is not None:
                    found.add(i)
            elif (
                isinstance(expr, relax.Call)
                and isinstance(expr.op, tvm.ir.GlobalVar)
                and expr.op.name_hint in by_name
            ):
                calls.append(by_name[expr.op.name_hint])

        relax.analysis.post_order_visit(functions[gvar].body, visit)
        for callee in calls:
            scan(callee, (*path, gvar))
        own[gvar], callees[gvar] = found, calls
        order.append(gvar)

    for gvar in entries:
        scan(gvar)
    needs: dict = {}
    for gvar in order:  # callees first
        needs[gvar] = sorted(own[gvar].union(*(needs[c] for c in callees[gvar])))
    for gvar in entries:
        needs[gvar] = list(range(len(weights)))

    @relax.expr_functor.mutator
    class Lift(relax.PyExprMutator):
        """Weights -> the function's parameters; calls pass their callees' weights."""

        def __init__(self, params: dict, module: tvm.IRModule) -> None:
            super().__init__(module)
            self.params = params

        def visit_generic_const_(self, op: Any) -> Any:
            i = weight_of(op)
            return op if i is None else self.params[i]

        def visit_call_(self, op: Any) -> Any:
            call = super().visit_call_(op)
            callee = (
                by_name.get(call.op.name_hint) if isinstance(call.op, tvm.ir.GlobalVar) else None
            )
            extra = [self.params[i] for i in needs.get(callee, ())]
            if not extra:
                return call
            return relax.Call(call.op, [*call.args, *extra], call.attrs, call.ty_args,
                              span=call.span, ret_ty=call.ty)  # fmt: skip

    for gvar in order:
        func = functions[gvar]
        params = {i: relax.Var(f"weight{i}", weights[i].ty) for i in needs[gvar]}
        body = Lift(params, mod).visit_expr(func.body)
        lifted = relax.Function([*func.params, *params.values()], body, func.ret_ty,
                                func.is_pure, func.attrs, func.span)  # fmt: skip
        mod.update_func(gvar, lifted)
    return mod, [np.ascontiguousarray(w.value.numpy()) for w in weights]


def append_weights(path: str | os.PathLike, weights: list[np.ndarray]) -> None:
    """Append the weights section (module doc) to the library ``path``; nothing when there
    are no weights."""
    if not weights:
        return
    entries = []
    with open(path, "ab") as f:
        for array in weights:
            f.write(b"\0" * (-f.tell() % ALIGNMENT))
            entries.append([f.tell(), str(array.dtype), list(array.shape)])
            f.write(np.ascontiguousarray(array).reshape(-1).view(np.uint8).data)
        index = json.dumps({"format": 1, "weights": entries}).encode()
        f.write(index + _LENGTH.pack(len(index)) + MAGIC)


def read_weights(path: str | os.PathLike, end: int | None = None) -> list[np.ndarray]:
    """The weights of the library ``path`` (empty when it has no weights section), as
    read-write views of a private copy-on-write mapping of the file; ``end``: where the
    library's bytes end (default: before the convforge trailer of an exported file, else
    the file's end). ValueError naming the file when the section is damaged."""
    if end is None:
        from convforge.export import library

        tail = library.trailer_bytes(os.fspath(path))
        if tail.endswith(library.MAGIC):  # an exported file: the library ends before it
            end = library.read_trailer(tail, os.fspath(path))[0].get("size")
    with open(path, "rb") as f:
        size = f.seek(0, os.SEEK_END) if end is None else end
        tail = _LENGTH.size + len(MAGIC)
        if size < tail:
            return []
        f.seek(size - tail)
        footer = f.read(tail)
        if not footer.endswith(MAGIC):
            return []
        (length,) = _LENGTH.unpack(footer[: _LENGTH.size])
        try:
            if length > size - tail:
                raise ValueError("index longer than the file")
            f.seek(size - tail - length)
            entries = json.loads(f.read(length).decode())["weights"]
            view = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)
            arrays = []
            for offset, dtype, shape in entries:
                count = int(np.prod(shape, dtype=np.int64))
                if offset % ALIGNMENT or offset + count * np.dtype(dtype).itemsize > size:
                    raise ValueError(f"weight at {offset} lies outside the library")
                arrays.append(np.frombuffer(view, dtype, count, offset).reshape(shape))
        except (ValueError, KeyError, TypeError) as err:
            raise ValueError(
                f"path: {os.fspath(path)!r} has a damaged weights section ({err})"
            ) from err
    return arrays
