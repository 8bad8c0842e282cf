"""Independent references: the convolution as a sparse matrix (scipy.sparse, ``[check]`` extra).

``conv(x) = C @ x.ravel()`` and ``conv_transpose(y) = C.T @ y.ravel()``, where C is built
by enumerating every (output, input, weight) triple of the definition, sharing no code
with the TE operators beyond the shape arithmetic.
"""

from __future__ import annotations

import itertools
from typing import TYPE_CHECKING

import numpy as np

from convforge.extras import require
from convforge.shapes import ConvGeometry

if TYPE_CHECKING:
    import scipy.sparse as sp


def conv_matrix(w: np.ndarray, geom: ConvGeometry) -> sp.csr_matrix:
    """Sparse C of shape (prod(out_shape), prod(x_shape)) with ``conv(x) = C @ x.ravel()``.

    w: (O, C/groups, *K) as for :func:`convforge.conv`; bias and activation excluded.
    Needs scipy (``pip install 'convforge[check]'``): MissingExtraError (an ImportError)
    without it.
    """
    sp = require("scipy.sparse", "convforge.conv_matrix")
    w = np.asarray(w)
    if w.shape != geom.w_shape:
        raise ValueError(f"weight must have shape {geom.w_shape}, got {w.shape}")
    cin = geom.in_channels // geom.groups
    opg = geom.out_channels // geom.groups
    rows, cols, vals = [], [], []
    out_index = np.arange(int(np.prod(geom.out_shape))).reshape(geom.out_shape)
    in_index = np.arange(int(np.prod(geom.x_shape))).reshape(geom.x_shape)
    for kpos in itertools.product(*(range(k) for k in geom.kernel)):
        # For this kernel tap, the input coordinate of every output position (per axis).
        src, valid = [], []
        for axis, (o, s, d, (lo, _), i) in enumerate(
            zip(geom.out_size, geom.stride, geom.dilation, geom.padding, geom.in_size)
        ):
            coord = np.arange(o) * s + kpos[axis] * d - lo
            src.append(coord)
            valid.append((coord >= 0) & (coord < i))
        grids = np.meshgrid(*src, indexing="ij")
        mask = np.logical_and.reduce(np.meshgrid(*valid, indexing="ij"))
        out_pos = [
            g[mask] for g in np.meshgrid(*(np.arange(o) for o in geom.out_size), indexing="ij")
        ]
        in_pos = [g[mask] for g in grids]
        for n, o, c in itertools.product(range(geom.batch), range(geom.out_channels), range(cin)):
            ci = (o // opg) * cin + c
            rows.append(out_index[(n, o, *out_pos)])
            cols.append(in_index[(n, ci, *in_pos)])
            vals.append(np.full(len(out_pos[0]), w[(o, c, *kpos)], dtype=np.float64))
    shape = (out_index.size, in_index.size)
    if not rows:
        return sp.csr_matrix(shape)
    return sp.csr_matrix(
        (np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=shape
    )
