"""The conformance steps: raw requests sent to a xenstored, and its raw replies recorded.

`tests/real_xen/test_real_xenstored.py` records Debian's real servers' replies into
tests/data/xenstored_conformance.json; `tests/sim/test_sim_conformance.py` holds the
simulated xenstored to them.
"""

from __future__ import annotations

from pathlib import Path

from mux.realxen import XenstoredUnderStub
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


def type_name(t: int) -> str:
    try:
        return wire.XsdSockmsgType(t).name
    except ValueError:
        return f"type {t}"


def run_steps(xsd: XenstoredUnderStub) -> list[dict]:
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
