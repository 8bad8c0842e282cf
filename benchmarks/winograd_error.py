"""Winograd's float32 error against the exact (float64) convolution, per form and input kind.

    python -m benchmarks.winograd_error [--json OUT]

For each Winograd form convforge uses (F(4x4, 3x3), F(2x2, 3x3) above 256 input channels,
F(4x4, 2x2) over the stride phases of a 3x3 stride-2 convolution, F(4x4, 4x4) of a 7x7
stride-2 stem) and each input kind (normal, uniform [0, 1), 1e-3 noise with one 1e3 outlier,
1e-3 noise with 1% of 1e3 outliers), prints the largest

- ``global``: |y - exact| / (max|x| * sum|w_k|), max|x| over the whole input and sum|w_k|
  over output channel k's weight: the ratio ``convforge.api.WINOGRAD_ERROR_BOUND`` bounds;
- ``local``: the same with max|x| over the output's own receptive field only: unbounded
  for Winograd (a tile's transform mixes all its inputs, so an outlier anywhere in the
  tile's input window rounds every output of the tile), about 1e-7 for the direct form;
- ``wrong sign``: outputs whose sign differs from the exact one's (|exact| > 1e-6 max|exact|),

for Winograd and, as the baseline, the direct convolution (``algorithm="direct"``).
The exact convolution is ``convforge.conv_matrix`` in float64 (the sparse-matrix oracle).
"""

from __future__ import annotations

import argparse
import json

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

import convforge as cf
from convforge import shapes

#: name: (x shape, w shape, convolution arguments)
FORMS = {
    "F(4x4,3x3)": ((1, 64, 32, 32), (64, 64, 3, 3), dict(padding=1)),
    "F(4x4,3x3) dilated": ((1, 64, 32, 32), (64, 64, 3, 3), dict(padding=2, dilation=2)),
    "F(2x2,3x3)": ((1, 320, 16, 16), (64, 320, 3, 3), dict(padding=1)),
    "stride-2 phases 3x3": ((1, 64, 32, 32), (64, 64, 3, 3), dict(padding=1, stride=2)),
    "stride-2 phases 7x7": ((1, 3, 64, 64), (32, 3, 7, 7), dict(padding=3, stride=2)),
}


def inputs(kind: str, shape, rng: np.random.Generator) -> np.ndarray:
    if kind == "normal":
        return rng.standard_normal(shape)
    if kind == "uniform":
        return rng.random(shape)
    x = 1e-3 * rng.standard_normal(shape)
    if kind == "one outlier":
        x[0, 0, shape[2] // 2, shape[3] // 2] = 1e3
    else:
        spikes = rng.random(shape) < 0.01
        x[spikes] = 1e3 * rng.choice([-1.0, 1.0], size=int(spikes.sum()))
    return x


def receptive_max(x: np.ndarray, geom: shapes.ConvGeometry) -> np.ndarray:
    """max|x| over each output position's receptive field (all channels): (N, 1, *out)."""
    a = np.abs(x).max(axis=1)
    (plh, phh), (plw, phw) = geom.padding
    a = np.pad(a, ((0, 0), (plh, phh), (plw, phw)))
    (kh, kw), (dh, dw), (sh, sw) = geom.kernel, geom.dilation, geom.stride
    windows = sliding_window_view(a, (dh * (kh - 1) + 1, dw * (kw - 1) + 1), axis=(1, 2))
    windows = windows[:, ::sh, ::sw, ::dh, ::dw]
    oh, ow = geom.out_size
    return windows[:, :oh, :ow].max(axis=(3, 4))[:, None]


def measure(form: str, kind: str, seed: int = 0) -> dict:
    x_shape, w_shape, kwargs = FORMS[form]
    rng = np.random.default_rng(seed)
    x = inputs(kind, x_shape, rng).astype(np.float32)
    w = rng.standard_normal(w_shape).astype(np.float32)
    geom = shapes.conv_geometry(x.shape, w.shape, **kwargs)
    exact = cf.conv_matrix(w.astype(np.float64), geom) @ x.astype(np.float64).ravel()
    exact = exact.reshape(geom.out_shape)
    wsum = np.abs(w.astype(np.float64)).sum(axis=(1, 2, 3))[None, :, None, None]
    big = np.abs(exact) > 1e-6 * np.abs(exact).max()
    result = {"form": form, "input": kind}
    for algorithm in ("winograd", "direct"):
        y = cf.conv(x, w, algorithm=algorithm, **kwargs).astype(np.float64)
        err = np.abs(y - exact)
        result[algorithm] = {
            "global": float((err / (np.abs(x).max() * wsum)).max()),
            "local": float((err / (receptive_max(x, geom) * wsum)).max()),
            "wrong_sign": int((np.sign(y) != np.sign(exact))[big].sum()),
        }
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", help="write the results here")
    parser.add_argument("--seeds", type=int, default=2, help="random inputs per form and kind")
    args = parser.parse_args()
    kinds = ("normal", "uniform", "one outlier", "outliers 1%")
    rows = [measure(f, k, s) for f in FORMS for k in kinds for s in range(args.seeds)]
    header = (
        f"{'form':<22} {'input':<12} {'algorithm':<9} {'global':>9} {'local':>9} {'wrong sign':>10}"
    )
    print(header)
    print("-" * len(header))
    for r in rows:
        for algorithm in ("winograd", "direct"):
            m = r[algorithm]
            print(
                f"{r['form']:<22} {r['input']:<12} {algorithm:<9} {m['global']:9.2e} "
                f"{m['local']:9.2e} {m['wrong_sign']:>10}"
            )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
