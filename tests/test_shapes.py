"""Shape arithmetic against the worked examples of Dumoulin & Visin's guide and ONNX/PyTorch."""

import pytest

from convforge import shapes


@pytest.mark.parametrize(
    ("i", "k", "s", "p", "d", "o"),
    [
        (5, 3, 2, 1, 1, 3),  # guide: relationship 6
        (6, 3, 2, 1, 1, 3),  # guide: relationship 6, odd output
        (5, 4, 1, 2, 1, 6),  # guide: arbitrary padding
        (7, 3, 1, 0, 2, 3),  # guide: dilated convolution
        (4, 3, 1, 0, 1, 2),  # guide: no padding, unit strides
        (5, 3, 1, 1, 1, 5),  # guide: half padding
        (5, 3, 1, 2, 1, 7),  # guide: full padding
    ],
)
def test_guide_examples(i, k, s, p, d, o):
    assert shapes.conv_output_size(i, k, s, p, p, d) == o
    g = shapes.conv_geometry((1, 1, i), (1, 1, k), stride=s, padding=p, dilation=d)
    assert g.out_size == (o,)


@pytest.mark.parametrize(
    ("i", "k", "s", "p", "op", "o"),
    [
        (3, 3, 2, 1, 0, 5),  # transpose of i=5,k=3,s=2,p=1
        (3, 3, 2, 1, 1, 6),  # transpose of i=6,k=3,s=2,p=1 (output_padding picks 6)
        (6, 4, 1, 2, 0, 5),  # transpose of i=5,k=4,s=1,p=2
        (2, 3, 1, 0, 0, 4),  # transpose of no padding, unit strides
        (5, 3, 1, 1, 0, 5),  # transpose of half padding
        (7, 3, 1, 2, 0, 5),  # transpose of full padding
    ],
)
def test_guide_transposed_examples(i, k, s, p, op, o):
    assert shapes.conv_transpose_output_size(i, k, s, p, p, 1, op) == o
    g = shapes.conv_transpose_geometry((1, 1, i), (1, 1, k), stride=s, padding=p, output_padding=op)
    assert g.out_size == (o,)


def test_transposed_dilated_example():
    # transpose of i=7, k=3, d=2 (output 3): back to 7
    g = shapes.conv_transpose_geometry((1, 1, 3), (1, 1, 3), dilation=2)
    assert g.out_size == (7,)


@pytest.mark.parametrize(
    ("mode", "i", "k", "s", "d", "pads", "o"),
    [
        ("valid", 7, 3, 2, 1, (0, 0), 3),
        ("same", 7, 3, 2, 1, (1, 1), 4),
        ("same", 8, 4, 1, 1, (1, 2), 8),
        ("same_lower", 8, 4, 1, 1, (2, 1), 8),
        ("same", 10, 3, 3, 2, (2, 2), 4),
        ("full", 5, 3, 1, 2, (4, 4), 9),
        ("causal", 10, 3, 1, 4, (8, 0), 10),
        ("half", 9, 5, 1, 1, (2, 2), 9),
    ],
)
def test_padding_modes(mode, i, k, s, d, pads, o):
    g = shapes.conv_geometry((1, 1, i), (1, 1, k), stride=s, padding=mode, dilation=d)
    assert g.padding == (pads,)
    assert g.out_size == (o,)


def test_padding_forms_agree():
    x, w = (1, 2, 9, 10), (4, 2, 3, 3)
    a = shapes.conv_geometry(x, w, padding=1)
    b = shapes.conv_geometry(x, w, padding=(1, 1))
    c = shapes.conv_geometry(x, w, padding=((1, 1), (1, 1)))
    assert a.padding == b.padding == c.padding == ((1, 1), (1, 1))
    asym = shapes.conv_geometry(x, w, padding=((0, 2), (1, 0)))
    assert asym.out_size == (9, 9)


def test_receptive_field():
    # WaveNet: k=2, dilations 1..512, one block: 1024 samples; three blocks: 3070.
    block = [(2, 1, 2**i) for i in range(10)]
    assert shapes.receptive_field(block) == 1024
    assert shapes.receptive_field(block * 3) == 3 * 1023 + 1
    # strided: two 3x3 stride-2 layers see 7 inputs
    assert shapes.receptive_field([(3, 2, 1), (3, 2, 1)]) == 7


def test_onnx_output_shape_pads():
    # ONNX ConvTranspose: total = s*(i-1) + op + d*(k-1) + 1 - out; odd pad at the start
    g = shapes.conv_transpose_geometry((1, 1, 4), (1, 1, 3), stride=2, output_shape=(8,))
    assert g.out_size == (8,) and sum(g.padding[0]) == 1
