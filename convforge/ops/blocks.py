"""Block names: the contract between the TE computations (``ops/``) and their schedules.

Every ``te.compute`` of ``ops/`` names its block with one of these constants and every
schedule rule finds the block by the same constant, so a renamed block is a renamed
constant, never a rule that silently stops applying. TVM's ``te.create_prim_func`` makes a
repeated name unique by a numeric suffix (``conv``, ``conv_1``, ...: the phases of a
sub-pixel transposed convolution); :func:`is_numbered` recognizes those. Annotation keys a
schedule reads (``*_ATTR``) are defined here too.
"""

from __future__ import annotations

# --- generic convolution (ops/conv.py) -----------------------------------------------
PAD = "pad"
CONV = "conv"
CONV_EPILOGUE = "conv_epilogue"
DILATE = "dilate"
WEIGHT_TRANSPOSE = "weight_transpose"

# --- blocked NCHW[x]c convolution (ops/conv_nchwc.py) -----------------------------------
NCHWC_PAD_X = "nchwc_pad_x"
NCHWC_PACK_X = "nchwc_pack_x"
NCHWC_PACK_W = "nchwc_pack_w"
CONV_NCHWC = "conv_nchwc"
NCHWC_UNPACK = "nchwc_unpack"
NCHWC_MAX_POOL = "nchwc_max_pool"

# --- Winograd (ops/winograd.py) -----------------------------------------------------
WINOGRAD_PAD = "winograd_pad"
WINOGRAD_INPUT_ROWS = "winograd_input_rows"
WINOGRAD_INPUT = "winograd_input"
WINOGRAD_WEIGHT_ROWS = "winograd_weight_rows"
WINOGRAD_WEIGHT = "winograd_weight"
WINOGRAD_GEMM = "winograd_gemm"
WINOGRAD_OUTPUT_ROWS = "winograd_output_rows"
WINOGRAD_OUTPUT = "winograd_output"
WINOGRAD_UNPACK = "winograd_unpack"
#: Annotation of ``winograd_output``: the dilation of a dilated Winograd convolution.
WINOGRAD_DILATION_ATTR = "winograd_dilation"
#: Annotation of a convolution's main block (``conv``, ``conv_nchwc``, ``winograd_gemm``):
#: the schedule knobs of a tuned plan (name -> int; :func:`knob_attrs`), absent by default.
SCHEDULE_KNOBS_ATTR = "schedule_knobs"
#: The schedule knob overriding ``schedules.cpu.is_small`` for a tuned plan: THREADS_ONE
#: runs the kernel on one thread, THREADS_ALL in parallel (absent: ``is_small``).
THREADS_KNOB = "threads"
THREADS_ONE, THREADS_ALL = 1, 2
#: The schedule knob choosing Winograd's pipeline per task (PIPELINE_TASKS) or its passes
#: (PIPELINE_PASSES) where a tuned plan sets it; else ``schedules.cpu_winograd`` decides.
PIPELINE_KNOB = "winograd_pipeline"
PIPELINE_TASKS, PIPELINE_PASSES = 1, 2
NONFINITE_ROWS = "nonfinite_rows"
NONFINITE_ANY = "nonfinite_any"
NONFINITE_FLAG = "nonfinite_flag"

# --- transposed convolutions (ops/conv_transpose_subpixel.py, conv_transpose_gather.py) -
SUBPIXEL_PAD = "subpixel_pad"
SUBPIXEL_WEIGHT = "subpixel_weight"
SUBPIXEL_INTERLEAVE = "subpixel_interleave"
#: Annotation of ``subpixel_interleave``: the strides (phases per axis).
SUBPIXEL_STRIDES_ATTR = "strides"
CONV_TRANSPOSE_TAPS = "conv_transpose_taps"
CONV_TRANSPOSE_GATHER = "conv_transpose_gather"

# --- integer convolutions (ops/qconv.py) ------------------------------------------------
QCONV_PAD = "qconv_pad"
QCONV_PACK_X = "qconv_pack_x"
#: The packing or padding of x: [start, stop) of its last axis that reads x (the rest is
#: padding).
QCONV_PACK_INTERIOR_ATTR = "qconv_pack_interior"
QCONV = "qconv"
QCONV_ROWS = "qconv_rows"
QCONV_X_SUM = "qconv_x_sum"
QCONV_REQUANT = "qconv_requant"
#: The blocked form's output in (N, O, *spatial), read from its requantized blocks.
QCONV_OUT = "qconv_out"

# --- resize (ops/resize.py) -----------------------------------------------------------
RESIZE = "resize"
RESIZE_WEIGHT = "resize_weight"  # + axis
RESIZE_WEIGHT_SUM = "resize_weight_sum"  # + axis
RESIZE_PASS = "resize_pass"  # + axis
PHASE_WEIGHT = "phase_weight"
PHASE_CONV = "phase_conv"
PHASE_INTERLEAVE = "phase_interleave"

# --- pools and heads (ops/pool.py, ops/heads.py) ---------------------------------------
POOL_PAD = "pool_pad"
POOL = "pool"
POOL_EPILOGUE = "pool_epilogue"
#: Annotation of ``pool``: its windows tile the input (no overlap, no gap).
POOL_WINDOWS_TILE_ATTR = "pool_windows_tile"
WINDOW_MAX = "window_max"
MAX_POOL_VALUE = "max_pool_value"
MAX_POOL_OUTPUT = "max_pool_output"
MAX_POOL_ARGMAX = "max_pool_argmax"
MAX_POOL_INDICES = "max_pool_indices"
FLATTEN = "flatten"
DENSE = "dense"
DENSE_EPILOGUE = "dense_epilogue"
#: (N, K) read out of a packed dense kernel's (K'/W, N, 1, W) output, plus the bias.
DENSE_UNPACK = "dense_unpack"
SOFTMAX_MAX = "softmax_max"
SOFTMAX_EXP = "softmax_exp"
SOFTMAX_SUM = "softmax_sum"
SOFTMAX_NORM = "softmax_norm"
#: The four blocks of a softmax, in computation order.
SOFTMAX = (SOFTMAX_MAX, SOFTMAX_EXP, SOFTMAX_SUM, SOFTMAX_NORM)

# --- causal convolution with state (ops/causal.py) --------------------------------------
CONCAT = "concat"
PRESENT_STATE = "present_state"
#: Annotation of ``present_state``: where the new state starts.
STATE_SPLIT_ATTR = "state_split"


# --- the fused streaming stack (convforge/streaming.py) -------------------------------
WEIGHT_LAYOUT = "weight_layout"  # + _<layer name>
BIAS_LAYOUT = "bias_layout"
SKIP_RELU = "skip_relu"


def is_numbered(name: str, base: str) -> bool:
    """Whether block ``name`` is ``base`` or ``base`` made unique (``base_<digits>``)."""
    if name == base:
        return True
    prefix = base + "_"
    return name.startswith(prefix) and name[len(prefix) :].isdigit()


def knob_attrs(knobs: dict[str, int] | None) -> dict | None:
    """The ``te.compute`` attributes carrying schedule ``knobs`` (None when there are none,
    so the default plan's TIR is unchanged)."""
    return {SCHEDULE_KNOBS_ATTR: dict(sorted(knobs.items()))} if knobs else None
