"""A kmock API server and a real ``shoal operator`` (kopf) process, shared by the operator tests."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from shoal.operator.testing.api import Api, OperatorProcess, wait_for
from shoal.operator.testing.kmock_cluster import KmockCluster


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
def operator(cluster: KmockCluster, api: Api, tmp_path_factory: pytest.TempPathFactory) -> Iterator[OperatorProcess]:
    # SHOAL_TEST_OPERATOR_LOG keeps the log somewhere pytest does not rotate away.
    log = Path(os.environ.get("SHOAL_TEST_OPERATOR_LOG") or tmp_path_factory.mktemp("operator") / "operator.log")
    with OperatorProcess(cluster.kubeconfig, log) as op:
        wait_for(lambda: "Activity 'startup' succeeded" in op.log() or not op.alive(), 60, what="operator startup")
        assert op.alive(), op.log()[-3000:]
        yield op
        assert op.alive(), "the operator died during the tests:\n" + op.log()[-3000:]
