"""The start that watch and wait share: resolve the domains, then subscribe, within the
--timeout budget, retrying (and saying so once) while the daemon cannot be reached."""

from __future__ import annotations

from collections.abc import Iterable

from mux.client import Cursor, Subscription, XenmuxError
from mux.client.wire import Deadline
from mux.commands.failure import EXIT_ERROR, EXIT_USAGE, CommandError
from mux.commands.reach import ask_retrying, retry_notice
from mux.commands.targets import needs_table, resolve, targets_of
from mux.protocol import ERR_BAD_CURSOR, ERR_BAD_DOMID, ERR_BAD_REQUEST

# Refusals of the subscribe request that mean the command line asked for something wrong.
USAGE_CODES = frozenset({ERR_BAD_CURSOR, ERR_BAD_DOMID, ERR_BAD_REQUEST})


def start(
    command: str,
    args,
    *,
    unknown_status: int,
    events: Iterable[str] | None = None,
    since: Cursor | None = None,
) -> Subscription:
    """The subscription for `args.domains`/`--uuid`/`--name` (all domains if none),
    made before `args.timeout` passes, else CommandError."""
    timeout = args.timeout
    deadline = Deadline.after(timeout)
    notice = retry_notice(command, timeout)
    targets = targets_of(args)
    domids = None
    try:
        if targets:
            rows = []
            if needs_table(targets):
                rows = ask_retrying(args.socket, deadline, notice, lambda c: c.list())
            domids = resolve(targets, rows, unknown_status)
        return Subscription(
            domids,
            events=events,
            socket_path=args.socket,
            retry_timeout=deadline.left(),
            since=since,
            on_retry=notice,
        )
    except XenmuxError as exc:
        if exc.code in USAGE_CODES:
            raise CommandError(str(exc), EXIT_USAGE) from None
        within = "" if timeout is None else f"no subscribe reply within {timeout:g} s: "
        raise CommandError(f"{within}{exc}", EXIT_ERROR) from None
    except CommandError as exc:
        if timeout is not None and exc.status == EXIT_ERROR:
            raise CommandError(f"no subscribe reply within {timeout:g} s: {exc}") from None
        raise
