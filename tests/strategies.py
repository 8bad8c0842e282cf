"""Hypothesis strategies shared by the convolution test files."""

from hypothesis import strategies as st


@st.composite
def grouped_conv_axes(draw, *, in_per_group: int):
    """``(nd, groups, in_channels, out_channels, kernel, stride)`` of a 1-, 2- or 3-D
    convolution: groups from (1, 1, 2, 3), 1 to ``in_per_group`` input and 1 to 3 output
    channels per group, kernel sizes 1 to 4 (to 3 in 3-D), strides 1 to 3."""
    nd = draw(st.integers(1, 3))
    groups = draw(st.sampled_from([1, 1, 2, 3]))
    cin = groups * draw(st.integers(1, in_per_group))
    cout = groups * draw(st.integers(1, 3))
    kernel = tuple(draw(st.integers(1, 4 if nd < 3 else 3)) for _ in range(nd))
    stride = tuple(draw(st.integers(1, 3)) for _ in range(nd))
    return nd, groups, cin, cout, kernel, stride
