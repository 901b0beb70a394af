"""Tests and doctests run in float64 so gradients can be compared to 1e-10.

Also: JAX's persistent compilation cache for the suite, and the ``e2e`` marker
that ``make test-fast`` deselects.
"""

import gc
import inspect
import os

import pytest

# Tests compile hundreds of small programs and run each once, so compiling is
# most of the suite's CPU. A lower XLA backend optimisation level cuts it by
# about a third, and XLA:CPU's older elemental emitters for fusions (instead
# of its fusion emitters) by half again (backend compile 28 s -> 11 s for a
# mix of value_and_grad and train programs), without changing any result the
# tests check. Set XLA_FLAGS to override.
os.environ.setdefault(
    "XLA_FLAGS",
    "--xla_backend_optimization_level=0 --xla_cpu_use_fusion_emitters=false",
)

import jax  # noqa: E402

jax.config.update("jax_enable_x64", True)

# Persistent compilation cache, for the inner loop: with JBPTT_TEST_CACHE=DIR
# (`make test-fast` sets it) a second run loads its many small programs from
# DIR instead of compiling them again. Every program is cached (no minimum
# compile time or size). The xdist workers share it (each loads what the
# other compiled). JAX does not write an entry atomically, so a worker may
# read one the other is still writing; JAX then warns and compiles again, and
# pyproject.toml's filterwarnings lets that warning pass. Off by default, so
# in `make test` and CI, where a cold run gains little from it.
_CACHE = os.environ.get("JBPTT_TEST_CACHE", "")
if _CACHE:
    # absolute, so a test that changes directory still finds it
    jax.config.update("jax_compilation_cache_dir", os.path.abspath(_CACHE))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)

# End-to-end tests: subprocesses, notebook executions, CLI runs of experiments
# and benchmarks, and the README's examples. Classified here by module and by
# what a test calls, so test files need no marker of their own.
_E2E_MODULES = {"test_readme", "test_notebooks"}
_E2E_CALLS = ("subprocess.", "quick_reproductions(", '"--quick"')


def _source(obj) -> str:
    try:
        return inspect.getsource(obj)
    except (OSError, TypeError):
        return ""


def _runs_e2e(source: str, helpers: set[str]) -> bool:
    return any(call in source for call in _E2E_CALLS) or any(
        f"{name}(" in source for name in helpers
    )


def _e2e_helpers(module) -> set[str]:
    """Module-level functions (helpers, fixtures) that run something end to end."""
    names = set()
    for name, obj in vars(module).items():
        fn = getattr(obj, "__wrapped__", obj)  # fixtures wrap their function
        if inspect.isfunction(fn) and fn.__module__ == module.__name__:
            if not name.startswith("test_") and _runs_e2e(_source(fn), set()):
                names.add(name)
    return names


def _is_e2e(item, helpers: set[str]) -> bool:
    module = item.module.__name__.rsplit(".", 1)[-1]
    if module in _E2E_MODULES:
        return True
    if item.get_closest_marker("xdist_group") is not None:
        return True  # groups exist to share one expensive end-to-end run
    if helpers & set(item.fixturenames):
        return True
    return _runs_e2e(_source(item.function), helpers)


@pytest.hookimpl(tryfirst=True)  # before `-m` deselects by marker
def pytest_collection_modifyitems(config, items):
    helpers: dict[str, set[str]] = {}
    for item in items:
        if not isinstance(item, pytest.Function) or item.module is None:
            continue
        name = item.module.__name__
        if name not in helpers:
            helpers[name] = _e2e_helpers(item.module)
        if _is_e2e(item, helpers[name]):
            item.add_marker(pytest.mark.e2e)


@pytest.hookimpl(trylast=True)  # after pytest-xdist has named the groups
def pytest_collection_finish(session):
    _check_groups(session.config, session.items)


def _check_groups(config, items) -> None:
    """Under ``--dist loadgroup`` pytest-xdist names each ``xdist_group``
    test ``<id>@<group>`` so that its scheduler keeps a group on one worker;
    where a pytest release keeps it from doing so, every worker would run the
    group's shared end-to-end run again, so say so instead."""
    if not getattr(config.option, "loadgroup", False):
        return
    lost = [i.nodeid for i in items if i.get_closest_marker("xdist_group")]
    lost = [n for n in lost if "@" not in n]
    if lost:
        raise pytest.UsageError(
            f"--dist loadgroup: pytest {pytest.__version__} left {lost[0]} "
            "without its xdist group, so grouped tests would not share a worker; "
            "install the pytest versions pyproject.toml's dev extra allows."
        )


@pytest.fixture(autouse=True, scope="module")
def _release_compiled_programs():
    """Drop every compiled program after each test module. XLA:CPU maps
    memory for each executable it keeps, and a worker that kept the
    programs of hundreds of modules passed Linux's default limit of 65 530
    mappings per process (vm.max_map_count), where compiling the next one
    segfaulted. Modules share few programs, so little is compiled again."""
    yield
    jax.clear_caches()
    gc.collect()
