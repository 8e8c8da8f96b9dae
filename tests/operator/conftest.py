"""A kmock API server and a real ``shoal operator`` (kopf) process, shared by the operator tests."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from support.api import Api, OperatorProcess, wait_for
from support.fake_router import FakeRouters, FakeRouterServer
from support.kmock_cluster import KmockCluster


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KmockCluster]:
    with KmockCluster(tmp_path_factory.mktemp("kmock")) as k:
        yield k


@pytest.fixture(scope="session")
def api(cluster: KmockCluster) -> Iterator[Api]:
    client = Api(cluster.url)
    client.install_crds()
    yield client
    client.close()


@pytest.fixture(scope="session")
def router_server(cluster: KmockCluster) -> Iterator[FakeRouterServer]:
    with FakeRouterServer(cluster.url) as server:
        yield server


@pytest.fixture
def routers(router_server: FakeRouterServer) -> FakeRouters:
    """What the (fake) routers report to the operator about their program classes."""
    return router_server.routers


@pytest.fixture(scope="session")
def operator(
    cluster: KmockCluster, api: Api, router_server: FakeRouterServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[OperatorProcess]:
    # SHOAL_TEST_OPERATOR_LOG keeps the log somewhere pytest does not rotate away.
    log = Path(os.environ.get("SHOAL_TEST_OPERATOR_LOG") or tmp_path_factory.mktemp("operator") / "operator.log")
    env = {
        "SHOAL_ROUTER_URL_TEMPLATE": router_server.url_template,
        "SHOAL_ROUTER_POD_URL_TEMPLATE": router_server.pod_url_template,
        "SHOAL_PROGRAM_STATUS_INTERVAL": "0.5",
    }
    with OperatorProcess(cluster.kubeconfig, log, env) as op:
        wait_for(lambda: "Activity 'startup' succeeded" in op.log() or not op.alive(), 60, what="operator startup")
        assert op.alive(), op.log()[-3000:]
        yield op
        assert op.alive(), "the operator died during the tests:\n" + op.log()[-3000:]
