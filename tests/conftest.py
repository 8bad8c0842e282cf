import atexit
import os
import shutil
import tempfile

import numpy as np
import pytest
from hypothesis import HealthCheck, settings

# Hermetic runs: the persistent kernel cache (and every subprocess a test starts) uses a
# temporary folder for the session, never the user's cache; removed at exit. Writing entries
# is off outside tests/test_kernel_cache.py (which turns it on): exporting each kernel's
# library costs about as much as compiling it (test_pool.py: 29 s -> 49 s with it on).
_KERNEL_CACHE = tempfile.mkdtemp(prefix="convforge-test-cache-")
os.environ["CONVFORGE_CACHE_DIR"] = _KERNEL_CACHE
os.environ["CONVFORGE_CACHE"] = "0"
os.environ.pop("CONVFORGE_CACHE_SIZE", None)
atexit.register(shutil.rmtree, _KERNEL_CACHE, ignore_errors=True)
# Tests count compiled kernels with build.cache_size(): the in-process LRU must not drop one
# meanwhile (tests/test_kernel_cache.py sets its own bound).
os.environ["CONVFORGE_MEMORY_CACHE"] = "1000000"

# Default run: >= 200 examples per property family; --slow: thousands.
settings.register_profile(
    "default",
    max_examples=200,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile(
    "slow",
    max_examples=2000,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def pytest_addoption(parser):
    parser.addoption("--slow", action="store_true", help="run slow tests and thousands of examples")


def pytest_configure(config):
    settings.load_profile(
        "slow" if config.getoption("--slow") else os.environ.get("HYPOTHESIS_PROFILE", "default")
    )


def pytest_collection_modifyitems(config, items):
    if config.getoption("--slow"):
        return
    skip = pytest.mark.skip(reason="opt-in: run with --slow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def rng():
    return np.random.default_rng(0)
