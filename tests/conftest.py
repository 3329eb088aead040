"""Suite-wide options: slow cases run with --run-slow or under CI; hypothesis has a CI profile."""
import os

import pytest

try:
    from hypothesis import HealthCheck, settings

    settings.register_profile("default", max_examples=100, deadline=None,
                              suppress_health_check=[HealthCheck.too_slow])
    settings.register_profile("ci", max_examples=500, deadline=None,
                              suppress_health_check=[HealthCheck.too_slow])
    settings.load_profile("ci" if os.environ.get("CI") == "true" else "default")
except ImportError:  # hypothesis is a test extra; the suite installs it
    pass


_OWN_CACHE = []


def pytest_configure(config: pytest.Config) -> None:
    # The build cache (compile_losses.build_cache) of this run is a fresh folder unless the caller
    # chose one (CI may keep one between runs): no test reads a build a user's run left behind.
    if not os.environ.get("COMPILE_LOSSES_CACHE_DIR"):
        import tempfile

        _OWN_CACHE.append(tempfile.mkdtemp(prefix="compile_losses_test_cache_"))
        os.environ["COMPILE_LOSSES_CACHE_DIR"] = _OWN_CACHE[-1]


def pytest_unconfigure(config: pytest.Config) -> None:
    import shutil

    for folder in _OWN_CACHE:
        shutil.rmtree(folder, ignore_errors=True)


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--run-slow", action="store_true", default=False,
                     help="run tests marked slow (CI=true turns this on)")
    parser.addoption("--run-exhaustive", action="store_true", default=False,
                     help="run tests marked exhaustive: the full cross-product, hours on 2 cores")


def _run_slow(config: pytest.Config) -> bool:
    return config.getoption("--run-slow") or os.environ.get("CI") == "true"


def pytest_collection_modifyitems(config: pytest.Config, items: list) -> None:
    slow = _run_slow(config)
    exhaustive = config.getoption("--run-exhaustive")
    skip_slow = pytest.mark.skip(reason="slow: run with --run-slow (CI runs it)")
    skip_exhaustive = pytest.mark.skip(reason="exhaustive: run with --run-exhaustive or `compile-losses verify --all`")
    for item in items:
        if "exhaustive" in item.keywords and not exhaustive:
            item.add_marker(skip_exhaustive)
        elif "slow" in item.keywords and not slow:
            item.add_marker(skip_slow)
