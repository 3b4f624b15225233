"""The conformance steps: raw requests sent to a xenstored, and its raw replies recorded.

`tests/real_xen/test_real_xenstored.py` records Debian's real servers' replies into
tests/data/xenstored_conformance.json; `tests/sim/test_sim_conformance.py` holds the
simulated xenstored to them.
"""

from __future__ import annotations

from pathlib import Path

from mux.realxen import XenstoredUnderStub, XsConnection
from mux.xenstore import wire

CONFORMANCE = Path(__file__).resolve().parent / "data" / "xenstored_conformance.json"

A = "a" * 4000
TX = "tx"  # the id returned by the last XS_TRANSACTION_START of the run
# (name, type, payload, tx_id)
STEPS: list[tuple[str, int, bytes, int | str]] = [
    ("write", wire.XS_WRITE, b"/test/a\0hello", 0),
    ("write-empty-value", wire.XS_WRITE, b"/test/empty\0", 0),
    ("read", wire.XS_READ, b"/test/a\0", 0),
    ("read-empty-value", wire.XS_READ, b"/test/empty\0", 0),
    ("read-missing", wire.XS_READ, b"/test/missing\0", 0),
    ("read-missing-parent", wire.XS_READ, b"/nowhere/x\0", 0),
    ("read-without-nul", wire.XS_READ, b"/test/a", 0),
    ("read-empty-payload", wire.XS_READ, b"", 0),
    ("write-relative", wire.XS_WRITE, b"rel\0v", 0),
    ("read-relative-as-absolute", wire.XS_READ, b"/local/domain/0/rel\0", 0),
    ("mkdir", wire.XS_MKDIR, b"/test/dir\0", 0),
    ("mkdir-existing", wire.XS_MKDIR, b"/test/dir\0", 0),
    ("mkdir-deep", wire.XS_MKDIR, b"/test/deep/er\0", 0),
    ("directory", wire.XS_DIRECTORY, b"/test\0", 0),
    ("directory-of-leaf", wire.XS_DIRECTORY, b"/test/a\0", 0),
    ("directory-missing", wire.XS_DIRECTORY, b"/test/missing\0", 0),
    ("directory-part", wire.XS_DIRECTORY_PART, wire.join("/test", "0"), 0),
    ("get-perms", wire.XS_GET_PERMS, b"/test/a\0", 0),
    ("get-perms-missing", wire.XS_GET_PERMS, b"/test/missing\0", 0),
    ("get-perms-guest-node", wire.XS_GET_PERMS, b"/local/domain/1\0", 0),
    ("set-perms", wire.XS_SET_PERMS, b"/test/a\0n0\0r1\0", 0),
    ("get-perms-after-set", wire.XS_GET_PERMS, b"/test/a\0", 0),
    ("set-perms-bad", wire.XS_SET_PERMS, b"/test/a\0x0\0", 0),
    ("get-perms-release-domain", wire.XS_GET_PERMS, b"@releaseDomain\0", 0),
    ("rm", wire.XS_RM, b"/test/dir\0", 0),
    ("rm-missing", wire.XS_RM, b"/test/dir\0", 0),
    ("rm-missing-parent", wire.XS_RM, b"/nowhere/x\0", 0),
    ("watch", wire.XS_WATCH, b"/test\0tok\0", 0),
    ("write-under-watch", wire.XS_WRITE, b"/test/b\0x", 0),
    ("watch-duplicate", wire.XS_WATCH, b"/test\0tok\0", 0),
    ("unwatch", wire.XS_UNWATCH, b"/test\0tok\0", 0),
    ("unwatch-missing", wire.XS_UNWATCH, b"/test\0tok\0", 0),
    ("watch-release-domain", wire.XS_WATCH, b"@releaseDomain\0rel\0", 0),
    ("watch-introduce-domain", wire.XS_WATCH, b"@introduceDomain\0intro\0", 0),
    ("watch-with-depth", wire.XS_WATCH, wire.join("@releaseDomain", "deep", "1"), 0),
    ("watch-release-domain-domid", wire.XS_WATCH, b"@releaseDomain/1\0one\0", 0),
    ("watch-bad-path", wire.XS_WATCH, b"/test/a b\0tok\0", 0),
    ("transaction-start", wire.XS_TRANSACTION_START, b"\0", 0),
    ("write-in-transaction", wire.XS_WRITE, b"/test/t\0in-tx", TX),
    ("read-in-transaction", wire.XS_READ, b"/test/t\0", TX),
    ("read-outside-transaction", wire.XS_READ, b"/test/t\0", 0),
    ("transaction-commit", wire.XS_TRANSACTION_END, b"T\0", TX),
    ("read-after-commit", wire.XS_READ, b"/test/t\0", 0),
    ("transaction-end-again", wire.XS_TRANSACTION_END, b"T\0", TX),
    ("transaction-start-2", wire.XS_TRANSACTION_START, b"\0", 0),
    ("transaction-end-bad-arg", wire.XS_TRANSACTION_END, b"X\0", TX),
    ("transaction-abort", wire.XS_TRANSACTION_END, b"F\0", TX),
    ("read-unknown-transaction", wire.XS_READ, b"/test/a\0", 999),
    ("get-domain-path", wire.XS_GET_DOMAIN_PATH, b"1\0", 0),
    ("is-introduced", wire.XS_IS_DOMAIN_INTRODUCED, b"1\0", 0),
    ("is-introduced-not", wire.XS_IS_DOMAIN_INTRODUCED, b"4\0", 0),
    ("resume-introduced", wire.XS_RESUME, b"1\0", 0),
    ("resume-not-introduced", wire.XS_RESUME, b"4\0", 0),
    ("resume-dom0", wire.XS_RESUME, b"0\0", 0),
    ("release-not-introduced", wire.XS_RELEASE, b"4\0", 0),
    ("introduce-port-0", wire.XS_INTRODUCE, wire.join("4", "65540", "0"), 0),
    ("introduce-missing-args", wire.XS_INTRODUCE, b"4\0", 0),
    ("introduce-again", wire.XS_INTRODUCE, wire.join("1", "65537", "2"), 0),
    ("path-bad-chars", wire.XS_READ, b"/test/a b\0", 0),
    ("path-trailing-slash", wire.XS_READ, b"/test/\0", 0),
    ("path-double-slash", wire.XS_READ, b"//test\0", 0),
    ("path-2048", wire.XS_READ, b"/" + b"p" * 2047 + b"\0", 0),
    ("path-2049", wire.XS_READ, b"/" + b"p" * 2048 + b"\0", 0),
    ("path-3073", wire.XS_READ, b"/" + b"p" * 3072 + b"\0", 0),
    ("write-path-2049", wire.XS_WRITE, b"/" + b"p" * 2048 + b"\0v", 0),
    ("write-value-4000", wire.XS_WRITE, b"/test/big\0" + A.encode(), 0),
    ("get-feature", wire.XS_GET_FEATURE, b"", 0),
    ("get-quota", wire.XS_GET_QUOTA, b"", 0),
    ("type-20-restrict-removed", 20, b"1\0", 0),
    ("type-watch-event-from-client", wire.XS_WATCH_EVENT, b"/x\0t\0", 0),
    ("type-error-from-client", wire.XS_ERROR, b"EINVAL\0", 0),
    ("type-unknown-0x7777", 0x7777, b"", 0),
    ("type-invalid-0xffff", wire.XS_INVALID, b"", 0),
    ("reset-watches", wire.XS_RESET_WATCHES, b"", 0),
    ("read-after-reset", wire.XS_READ, b"/test/a\0", 0),
]
REPLY_WAIT = 1.0  # a server may hold a reply back (oxenstored, GET_FEATURE): don't hang


def like_the_recording(sim) -> None:
    """Bring a fresh sim (a tests/simhelpers.py SimHandle with no guests) into the
    recording's state: dom0, guests 1-4 in the hypervisor, 1-3 introduced with the requests
    realxen.XenstoredUnderStub.introduce() sends (libxl's)."""
    for domid in (1, 2, 3, 4):
        sim.ctl.create(domid=domid, introduce=False)
    with XsConnection(sim.xenstored) as c:
        for domid in (1, 2, 3):
            base = f"/local/domain/{domid}"
            tx = c.transaction_start()
            c.mkdir(base, tx)
            c.set_perms(base, f"n{domid}", "r0", tx=tx)
            c.write(f"{base}/name", f"guest{domid}", tx)
            c.write(f"{base}/domid", str(domid), tx)
            c.transaction_end(tx)
            c.introduce(domid, 0x10000 + domid, 2)


class SocketTarget:
    """What run_steps() needs of a server given by its socket path: connect()."""

    def __init__(self, path: str) -> None:
        self.path = path

    def connect(self) -> XsConnection:
        return XsConnection(self.path)


def type_name(t: int) -> str:
    try:
        return wire.XsdSockmsgType(t).name
    except ValueError:
        return f"type {t}"


def run_steps(xsd: XenstoredUnderStub | SocketTarget) -> list[dict]:
    out = []
    tx = 0
    with xsd.connect() as c:
        for name, msg_type, payload, tx_spec in STEPS:
            tx_id = tx if tx_spec == TX else int(tx_spec)
            req_id = c.send(msg_type, payload, tx_id)
            frames = []
            while True:
                try:
                    t, rid, _tx, body = c.recv(REPLY_WAIT)
                except TimeoutError:
                    frames.append({"no_reply_within_s": REPLY_WAIT})
                    break
                frames.append(
                    {
                        "type": t,
                        "name": type_name(t),
                        "payload": body.decode("latin-1"),
                        **({} if rid in (req_id, 0) else {"reply_to_earlier": True}),
                    }
                )
                if rid == req_id and t != wire.XS_WATCH_EVENT:
                    break
            if msg_type == wire.XS_TRANSACTION_START and frames[-1].get("type") == msg_type:
                tx = int(frames[-1]["payload"].rstrip("\0"))
            shown = payload.decode("latin-1")
            if len(shown) > 80:
                shown = shown[:40] + f"...({len(payload)} bytes)..." + shown[-10:]
            out.append(
                {
                    "step": name,
                    "type": msg_type,
                    "name": type_name(msg_type),
                    "tx_id": tx_id,
                    "payload": shown,
                    "replies": frames,
                }
            )
    return out


# ---------------------------------------------------------------------------------------------
# Transactions between two connections
#
# STEPS above run on one connection. A transaction's conflict rule needs a second one: each
# case below is a list of (conn, op, path, value) steps on connections "A" and "B", where a
# step with a lower-case conn ("a") runs inside that connection's open transaction. Each
# step's outcome is "OK", the value read, or the errno name; EXPECTED is what Debian's real
# C xenstored 4.17 answers (tests/real_xen/test_real_xenstored.py) and the sim must answer
# the same (tests/sim/test_sim_transactions.py).

TxStep = tuple[str, str, str, str]

TX_CASES: dict[str, list[TxStep]] = {
    # The rule of issue 17 item 6: a node the transaction read, changed by another
    # connection before the commit, makes the commit fail with EAGAIN.
    "read-then-other-writes": [
        ("A", "write", "/tx/x", "1"),
        ("A", "start", "", ""),
        ("a", "read", "/tx/x", ""),
        ("B", "write", "/tx/x", "2"),
        ("a", "write", "/tx/y", "from-tx"),
        ("a", "commit", "", ""),
        ("B", "read", "/tx/x", ""),
        ("B", "read", "/tx/y", ""),
    ],
    # Writing the same value is still a change (the generation moves).
    "read-then-other-writes-same-value": [
        ("A", "write", "/tx/x", "1"),
        ("A", "start", "", ""),
        ("a", "read", "/tx/x", ""),
        ("B", "write", "/tx/x", "1"),
        ("a", "commit", "", ""),
    ],
    # A blind write is an access too.
    "write-then-other-writes": [
        ("A", "write", "/tx/x", "1"),
        ("A", "start", "", ""),
        ("a", "write", "/tx/x", "mine"),
        ("B", "write", "/tx/x", "theirs"),
        ("a", "commit", "", ""),
        ("B", "read", "/tx/x", ""),
    ],
    "read-then-other-removes": [
        ("A", "write", "/tx/x", "1"),
        ("A", "start", "", ""),
        ("a", "read", "/tx/x", ""),
        ("B", "rm", "/tx/x", ""),
        ("a", "commit", "", ""),
    ],
    # Both create the same new node: the parent's child list changed under the transaction.
    "both-create": [
        ("A", "mkdir", "/tx", ""),
        ("A", "start", "", ""),
        ("a", "write", "/tx/new", "mine"),
        ("B", "write", "/tx/new", "theirs"),
        ("a", "commit", "", ""),
        ("B", "read", "/tx/new", ""),
    ],
    # A sibling created under a parent the transaction changed (it added a child).
    "sibling-created-under-a-changed-parent": [
        ("A", "mkdir", "/tx", ""),
        ("A", "start", "", ""),
        ("a", "write", "/tx/mine", "1"),
        ("B", "write", "/tx/theirs", "2"),
        ("a", "commit", "", ""),
    ],
    # Changes to nodes the transaction never looked at do not conflict.
    "unrelated-change": [
        ("A", "write", "/tx/x", "1"),
        ("A", "write", "/other/z", "1"),
        ("A", "start", "", ""),
        ("a", "read", "/tx/x", ""),
        ("B", "write", "/other/z", "2"),
        ("a", "write", "/tx/x", "3"),
        ("a", "commit", "", ""),
        ("B", "read", "/tx/x", ""),
    ],
    # No snapshot: a node first read after another connection changed it reads the new
    # value, and the commit succeeds.
    "read-after-other-writes": [
        ("A", "write", "/tx/x", "1"),
        ("A", "start", "", ""),
        ("B", "write", "/tx/x", "2"),
        ("a", "read", "/tx/x", ""),
        ("a", "commit", "", ""),
    ],
    # Isolation: the other connection does not see the transaction's writes before commit.
    "uncommitted-writes-are-private": [
        ("A", "write", "/tx/x", "1"),
        ("A", "start", "", ""),
        ("a", "write", "/tx/x", "2"),
        ("B", "read", "/tx/x", ""),
        ("a", "commit", "", ""),
        ("B", "read", "/tx/x", ""),
    ],
    # An abort is OK whatever happened meanwhile, and changes nothing.
    "abort-after-conflict": [
        ("A", "write", "/tx/x", "1"),
        ("A", "start", "", ""),
        ("a", "write", "/tx/x", "mine"),
        ("B", "write", "/tx/x", "theirs"),
        ("a", "abort", "", ""),
        ("B", "read", "/tx/x", ""),
    ],
    # A missing node read inside the transaction, then created by the other connection.
    "missing-read-then-other-creates": [
        ("A", "mkdir", "/tx", ""),
        ("A", "start", "", ""),
        ("a", "read", "/tx/ghost", ""),
        ("B", "write", "/tx/ghost", "boo"),
        ("a", "write", "/tx/other", "1"),
        ("a", "commit", "", ""),
    ],
    # The other connection's own transaction commits first: the later one fails.
    "two-transactions-on-one-node": [
        ("A", "write", "/tx/x", "1"),
        ("A", "start", "", ""),
        ("B", "start", "", ""),
        ("a", "read", "/tx/x", ""),
        ("b", "read", "/tx/x", ""),
        ("b", "write", "/tx/x", "b"),
        ("b", "commit", "", ""),
        ("a", "write", "/tx/x", "a"),
        ("a", "commit", "", ""),
        ("A", "read", "/tx/x", ""),
    ],
    # No nested transactions.
    "nested-start": [
        ("A", "start", "", ""),
        ("a", "start", "", ""),
        ("a", "abort", "", ""),
    ],
    # Quota: dom0's socket connection may hold more than quota-max-transaction (10) open
    # transactions (the quota applies to guests' connections).
    "many-open-transactions": [("A", "start", "", "")] * 12 + [("a", "commit", "", "")],
    # After EAGAIN the transaction is gone: ending it again is ENOENT.
    "end-after-eagain": [
        ("A", "write", "/tx/x", "1"),
        ("A", "start", "", ""),
        ("a", "read", "/tx/x", ""),
        ("B", "write", "/tx/x", "2"),
        ("a", "commit", "", ""),
        ("a", "commit", "", ""),
    ],
}

# What C xenstored 4.17 answers, step by step (observed with the real server).
TX_EXPECTED: dict[str, list[str]] = {
    "read-then-other-writes": ["OK", "tx", "1", "OK", "OK", "EAGAIN", "2", "ENOENT"],
    "read-then-other-writes-same-value": ["OK", "tx", "1", "OK", "EAGAIN"],
    "write-then-other-writes": ["OK", "tx", "OK", "OK", "EAGAIN", "theirs"],
    "read-then-other-removes": ["OK", "tx", "1", "OK", "EAGAIN"],
    "both-create": ["OK", "tx", "OK", "OK", "EAGAIN", "theirs"],
    "sibling-created-under-a-changed-parent": ["OK", "tx", "OK", "OK", "EAGAIN"],
    "unrelated-change": ["OK", "OK", "tx", "1", "OK", "OK", "OK", "3"],
    "read-after-other-writes": ["OK", "tx", "OK", "2", "OK"],
    "uncommitted-writes-are-private": ["OK", "tx", "OK", "1", "OK", "2"],
    "abort-after-conflict": ["OK", "tx", "OK", "OK", "OK", "theirs"],
    "missing-read-then-other-creates": ["OK", "tx", "ENOENT", "OK", "OK", "EAGAIN"],
    "two-transactions-on-one-node": ["OK", "tx", "tx", "1", "1", "OK", "OK", "OK", "EAGAIN", "b"],
    "end-after-eagain": ["OK", "tx", "1", "OK", "EAGAIN", "ENOENT"],
    "nested-start": ["tx", "EBUSY", "OK"],
    "many-open-transactions": ["tx"] * 12 + ["OK"],
}

# Where oxenstored 4.17 answers otherwise (recorded, not modelled: the sim's transactions are
# C xenstored's). oxenstored takes a snapshot at TRANSACTION_START (a later outside change is
# not seen inside), commits a transaction that only read, and merges a conflicting commit
# whenever its own writes still apply: only the first case's conflict (a read node changed,
# and the transaction wrote) is refused.
TX_OXENSTORED: dict[str, list[str]] = {
    "read-then-other-writes-same-value": ["OK", "tx", "1", "OK", "OK"],
    "write-then-other-writes": ["OK", "tx", "OK", "OK", "OK", "mine"],
    "read-then-other-removes": ["OK", "tx", "1", "OK", "OK"],
    "both-create": ["OK", "tx", "OK", "OK", "OK", "mine"],
    "sibling-created-under-a-changed-parent": ["OK", "tx", "OK", "OK", "OK"],
    "read-after-other-writes": ["OK", "tx", "OK", "1", "OK"],
    "end-after-eagain": ["OK", "tx", "1", "OK", "OK", "EIO"],
}


def tx_expected(kind: str) -> dict[str, list[str]]:
    """Each case's answers from the real server `kind` ("xenstored" or "oxenstored")."""
    return {**TX_EXPECTED, **TX_OXENSTORED} if kind == "oxenstored" else dict(TX_EXPECTED)


def run_tx_case(xsd: XenstoredUnderStub, steps: list[TxStep]) -> list[str]:
    """Run one case on two fresh connections; the outcome of each step."""
    out: list[str] = []
    with xsd.connect() as a, xsd.connect() as b:
        conns = {"A": a, "B": b}
        txs = {"A": 0, "B": 0}
        for who, op, path, value in steps:
            conn = conns[who.upper()]
            tx = txs[who.upper()] if who.islower() else 0
            try:
                if op == "start":  # inside a transaction ("a"): a nested start
                    reply = conn.call(wire.XS_TRANSACTION_START, b"\0", tx)
                    txs[who.upper()] = int(reply.rstrip(b"\0"))
                    out.append("tx")
                    continue
                if op in ("commit", "abort"):
                    conn.transaction_end(tx, op == "commit")
                elif op == "read":
                    out.append(conn.read(path, tx).decode("latin-1"))
                    continue
                elif op == "write":
                    conn.write(path, value, tx)
                else:
                    getattr(conn, op)(path, tx)  # mkdir, rm
                out.append("OK")
            except wire.XenstoreError as exc:
                out.append(exc.name)
        for root in ("/tx", "/other"):
            try:
                a.rm(root)
            except wire.XenstoreError:
                pass  # a case whose root was never made
    return out
