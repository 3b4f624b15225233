"""What a user sees when the pool cannot be reached as asked: one line, and no traceback."""

from __future__ import annotations

import os
import time

from daemonhelpers import until
from poolhelpers import bucket_keys


def one_line(text: str) -> str:
    lines = [line for line in text.splitlines() if line.strip()]
    assert len(lines) == 1, text
    assert "Traceback" not in text
    return lines[0]


def test_a_server_that_wants_a_password_rejects_a_bridge_without_it(pool, tmp_path):
    nats = pool.nats(auth=("xenmux", "s3cret pass"))
    a = pool.shared_host("a")
    wrong = tmp_path / "wrong"
    wrong.write_text("nope\n")
    good = tmp_path / "password"
    good.write_text("s3cret pass\n")
    os.chmod(good, 0o600)
    # The three at once (each is a process start).
    bare = pool.bridge(a, nats.url, ready=False, ok=(1,))
    bad = pool.bridge(
        a, nats.url, "--user", "xenmux", "--password-file", str(wrong), ready=False, ok=(1,)
    )
    bridge = pool.bridge(a, nats.url, "--user", "xenmux", "--password-file", str(good), ready=False)
    assert bare.proc.wait(30) == 1
    line = one_line(bare.stderr())
    assert line.startswith("xenmux bridge: NATS at ") and "refused" in line, line
    assert "Authorization Violation" in line
    assert bad.proc.wait(30) == 1 and "refused" in bad.stderr()
    keys = lambda: bucket_keys(nats.url, user="xenmux", password="s3cret pass")  # noqa: E731
    until(lambda: any(k.endswith(".checkpoint") for k in keys()), timeout=30)
    assert bridge.proc.poll() is None
    # The pool commands take the same options and say the same.
    got = pool.run("pool", "domains", "--nats", nats.url)
    assert got.returncode == 1 and "refused" in one_line(got.stderr)
    got = pool.run(
        "pool", "domains", "--nats", nats.url, "--user", "xenmux", "--password-file", str(good)
    )
    assert got.returncode == 0 and " a " in got.stdout, got.stderr


def test_bad_options_get_one_line(pool, tmp_path):
    cases = []
    for args, expect in (
        (("bridge", "--nats", "127.0.0.1:4222"), "give a URL such as nats://"),
        (("bridge", "--nats", "nats://127.0.0.1:1", "--user", "u"), "go together"),
        (
            ("bridge", "--nats", "nats://127.0.0.1:1", "--user", "u", "--password-file", "/nope"),
            "cannot read --password-file /nope",
        ),
        (("bridge", "--nats", "nats://127.0.0.1:1", "--host", ""), "the host name is empty"),
        (("bridge", "--nats", "nats://127.0.0.1:1", "--stream", "a.b"), "stream name 'a.b'"),
        (("pool", "watch", "--nats", "nats://127.0.0.1:1", "--since", "soon"), "--since 'soon'"),
        (("pool", "watch", "--nats", "nats://127.0.0.1:1", "--events", "boom"), "unknown event"),
    ):
        cases.append((args, expect))
    # Nothing listens there: pool domains says so at once, with the reason.
    nowhere = ("pool", "domains", "--nats", "nats://127.0.0.1:1")
    t = time.monotonic()
    *done, got = pool.run_all(*(args for args, _ in cases), nowhere, timeout=30)
    for (args, expect), result in zip(cases, done, strict=True):
        assert result.returncode in (1, 2), (args, result.returncode)
        assert expect in one_line(result.stderr), (args, result.stderr)
    assert got.returncode == 1 and time.monotonic() - t < 15
    assert "cannot reach NATS at nats://127.0.0.1:1: connection refused" in one_line(got.stderr)


def test_without_nats_py_the_bridge_says_what_to_install(pool, tmp_path):
    # A `nats` module that cannot be imported stands for nats-py not being installed.
    shadow = tmp_path / "shadow"
    shadow.mkdir()
    (shadow / "nats.py").write_text("raise ImportError('No module named nats')\n")
    env = dict(os.environ, PYTHONPATH=str(shadow))
    from simhelpers import sim_command

    for args in (("bridge", "--nats", "nats://127.0.0.1:1"), ("pool", "domains", "--nats", "x")):
        proc = pool.start([*sim_command(), *args], "no-nats", env=env, ok=(1,))
        assert proc.proc.wait(30) == 1
        line = one_line(proc.stderr())
        assert "nats-py" in line and "pip install 'xen-watch-mux[pool]'" in line, line


def test_a_bridge_waits_for_nats_and_says_so_once(pool):
    from mux.bench.natsserver import NatsServer, free_port

    pool.need_nats_server()
    port = free_port()
    a = pool.shared_host("a")
    bridge = pool.bridge(a, f"nats://127.0.0.1:{port}", ready=False)
    time.sleep(2.0)
    assert bridge.proc.poll() is None
    assert bridge.stderr().count("cannot reach NATS") == 1, bridge.stderr()
    server = NatsServer(pool.workdir, "late", port=port)
    pool.servers.append(server)
    server.start()
    until(lambda: bucket_keys(server.url), timeout=30)
    assert "reachable again" in bridge.stderr()
