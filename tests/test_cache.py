"""The kernel cache: an identical call reuses the compiled kernel, a new attribute compiles."""

import numpy as np

import convforge as cf
from convforge import build


def test_identical_call_reuses_kernel_and_new_attribute_compiles(monkeypatch):
    from convforge import api

    # the kernel cache alone: no packed-weight kernel for the weight passed again
    monkeypatch.setattr(api.WEIGHT_CACHE, "max_entries", 0)
    rng = np.random.default_rng(3)
    # Shapes no other test uses, so the first call here must compile.
    x = rng.standard_normal((1, 7, 13, 11)).astype(np.float32)
    w = rng.standard_normal((5, 7, 3, 2)).astype(np.float32)
    start = build.cache_size()
    first = cf.conv(x, w, padding=1)
    assert build.cache_size() == start + 1
    again = cf.conv(x + 1, w, padding=1)  # new values, same shapes and attributes
    assert build.cache_size() == start + 1
    c = cf.conv_matrix(w.astype(np.float64), cf.conv_geometry(x.shape, w.shape, padding=1))
    for inputs, y in ((x, first), (x + 1, again)):  # the reused kernel reads the new values
        expected = (c @ inputs.astype(np.float64).ravel()).reshape(y.shape)
        np.testing.assert_allclose(y, expected, rtol=1e-4, atol=1e-4)
    for changed in (
        dict(padding=1, stride=2),
        dict(padding=1, dilation=2),
        dict(padding=1, activation="relu"),
        dict(padding=(1, 0)),
    ):
        before = build.cache_size()
        cf.conv(x, w, **changed)
        assert build.cache_size() == before + 1, changed
        cf.conv(x, w, **changed)
        assert build.cache_size() == before + 1, changed
    before = build.cache_size()
    cf.conv(x.astype(np.float64), w.astype(np.float64), padding=1)  # new dtype
    cf.conv(x, w, np.zeros(5, np.float32), padding=1)  # with bias
    assert build.cache_size() == before + 2


def test_conv_transpose_cache():
    x = np.ones((1, 7, 5, 3), np.float32)
    w = np.ones((7, 3, 2, 2), np.float32)
    start = build.cache_size()
    cf.conv_transpose(x, w, stride=2)
    cf.conv_transpose(x, w, stride=2)
    assert build.cache_size() == start + 1
    cf.conv_transpose(x, w, stride=2, output_padding=1)
    assert build.cache_size() == start + 2
    # Same geometry reached through output_shape: the key is the resolved geometry.
    cf.conv_transpose(x, w, stride=2, output_shape=(11, 7))
    assert build.cache_size() == start + 2
