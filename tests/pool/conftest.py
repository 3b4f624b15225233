"""Fixtures of the pool tests: real nats-server, simulated hosts with daemons, bridges.

    def test_x(pool):
        nats = pool.nats()                       # one nats-server on 127.0.0.1
        a, b = pool.shared_host("a"), pool.shared_host("b.pool.example")
        pool.bridge(a, nats.url)                 # xenmux bridge for host a
        watch = pool.watch(nats.url)             # xenmux pool watch --since 1, to a file

A host (sim + daemon + the host's own event log) takes seconds to start, a nats-server a
tenth of one: so every test has servers of its own, and the hosts "a" and "b.pool.example"
are started once for all the tests here (`shared_host`; `host` starts one for the test
alone, with daemon options of its own). A test's first bridge for a host, on a fresh
stream, starts from the daemon's snapshot: the host's own log is compared from there
(`Host.since`). Tests leave the shared hosts' domains as they find them or create their
own; none relies on another's.

Every process is stopped by its PID at teardown (the bridges and watchers with SIGTERM, and
each must exit 0), every server's store is removed, and each server is checked to listen
on 127.0.0.1 only.
"""

from __future__ import annotations

import pytest
from poolhelpers import Pool, SharedHosts


@pytest.fixture(scope="package")
def shared_hosts(tmp_path_factory):
    shared = SharedHosts(tmp_path_factory.mktemp("pool-hosts"))
    yield shared
    errors = shared.close()
    assert not errors, errors


@pytest.fixture
def pool(tmp_path, sim_factory, shared_hosts):
    p = Pool(tmp_path, sim_factory, shared_hosts)
    yield p
    errors = p.close()
    assert not errors, errors
