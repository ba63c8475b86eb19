"""Fixtures shared by the test modules.

``one_blas_thread`` (module scope) limits BLAS to one thread; a module opts in with
``pytestmark = pytest.mark.usefixtures("one_blas_thread")``.
"""
import pytest


@pytest.fixture(scope="module")
def one_blas_thread():
    """One BLAS thread: on a shared 2-core machine, threaded BLAS stalls when another process runs.

    Without threadpoolctl (an optional test dependency) the limit is skipped, not the tests.
    """
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        yield
        return
    with threadpool_limits(limits=1, user_api="blas"):
        yield
