"""pytest fixtures over s3env: one moto server per session, a fresh bucket and a
fault proxy per test.  conftest.py registers them: pytest_plugins = ["s3fixtures"]."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from s3env import DUMMY_AWS, UNSET_AWS, FaultProxy, MotoServer


@pytest.fixture(scope="session")
def moto_server() -> Iterator[MotoServer]:
    """The moto S3 server; this process's environment gets the dummy AWS settings,
    for stores opened in tests."""
    with pytest.MonkeyPatch.context() as mp:
        for name in UNSET_AWS:
            mp.delenv(name, raising=False)
        for name, value in DUMMY_AWS.items():
            mp.setenv(name, value)
        server = MotoServer()
        try:
            yield server
        finally:
            server.stop()


@pytest.fixture
def s3_bucket(moto_server: MotoServer) -> Iterator[str]:
    """The name of a new, empty bucket, deleted with its objects afterwards."""
    name = moto_server.make_bucket(f"dmsfs-test-{uuid.uuid4().hex[:16]}")
    yield name
    moto_server.resume()   # a test that paused the server may have failed before resuming it
    moto_server.drop_bucket(name)


@pytest.fixture
def fault_proxy(moto_server: MotoServer) -> Iterator[FaultProxy]:
    """A FaultProxy in front of the session's moto server."""
    proxy = FaultProxy(moto_server.url)
    yield proxy
    proxy.close()
