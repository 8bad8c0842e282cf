"""How many threads convforge's kernels run on: one per physical core unless the user chose.

Imported by ``import convforge`` (no TVM import: it only sets an environment variable) and by
:mod:`convforge.targets`, so the default is in place before TVM's thread pool starts.
"""

from __future__ import annotations

import os


def physical_cores() -> int:
    """Physical cores this process may run on (hardware threads of one core count once)."""
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, min(usable or 1, _core_count() or usable or 1))


def _core_count() -> int | None:
    """Physical cores of the machine: psutil's count if installed, else Linux's sysfs topology."""
    try:
        import psutil  # the [tune] extra; the base install reads sysfs below
    except ImportError:
        import glob

        siblings = set()
        for path in glob.glob("/sys/devices/system/cpu/cpu[0-9]*/topology/thread_siblings_list"):
            with open(path) as f:
                siblings.add(f.read().strip())
        return len(siblings) or None
    return psutil.cpu_count(logical=False)


# TVM's runtime starts one worker per two hardware threads on x86 unless told otherwise (it
# assumes hyper-threading): a single thread on a 2-core machine, which halves every parallel
# kernel. Run one worker per physical core unless the user chose (TVM reads these variables
# when its thread pool starts, at the first parallel kernel).
if "TVM_NUM_THREADS" not in os.environ and "OMP_NUM_THREADS" not in os.environ:
    os.environ["TVM_NUM_THREADS"] = str(physical_cores())
