"""The sim's change path off the event loop: the C thread of mux/sim/hostpath.h and what keeps
Python in step with it.

The thread owns DIR/changes.sock and applies, without waking Python, the changes the
harness drives most: shutdown and suspend of a running guest, the dying step of a destroy
(FLAG_ZOMBIE) and a bare VIRQ, each with xenstored's domain pass (C xenstored's latching
rules) and the firing of the special watches, and destroy while no watch sits on a node
(the toolstack's removal of the domain's nodes then fires nothing, and is made when Python
drains). Every other op (create, resume, a destroy while nodes are watched), any change the
host refuses (Python words the error) and every change of a host whose VIRQ reaches more
than the in-process xenstored, or with oxenstored's rules, is handed to the loop, which
applies it as before and answers.

What the thread changed reaches Python's objects (the `Domain` states, the introduced list,
the counters, the table writer's sequence) from its journal, drained under the shared lock
before any Python operation: every xenstored request, every control request and every
lifecycle method of the host, which all hold that lock. No timer wakes Python for it: once
the journal holds 1,024 entries (a mass shutdown) the thread asks the loop to apply them,
which bounds it; until then nothing of Python's can see the difference.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
from collections.abc import Callable
from typing import TYPE_CHECKING

from mux.records import REASON_NAMES
from mux.sim._simfast import J_DROP, J_FORGET, J_REMOVE, J_STATE, J_ZOMBIE

if TYPE_CHECKING:
    from mux.sim.host import Hypervisor
    from mux.sim.toolstack import Toolstack
    from mux.sim.xenstored import Xenstored

log = logging.getLogger("mux.sim")


class HostPath:
    """The change thread of one host and its in-process xenstored."""

    def __init__(
        self, hv: Hypervisor, xs: Xenstored, toolstack: Toolstack, seed: int | None
    ) -> None:
        self.hv = hv
        self.xs = xs
        self.toolstack = toolstack
        self.engine = xs.engine
        self._seed = seed
        self._last = (0, 0, 0, 0, 0, 0)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._listener: socket.socket | None = None
        self._answer: Callable[[bytes], bytes] | None = None
        self.engine.on_drain = self.drain
        hv.guard = self.engine

    @staticmethod
    def applies(hv: Hypervisor, xs: Xenstored) -> bool:
        """Whether the thread may apply changes itself: the VIRQ reaches only this xenstored,
        whose rules are C xenstored's (the latch)."""
        return (
            xs.rules.latch and not hv.has_virq_sinks() and hv.virq_handlers() == [xs.check_domains]
        )

    def start(self, listener: socket.socket, answer: Callable[[bytes], bytes]) -> None:
        """The thread serves `listener`; `answer(request) -> reply` makes the changes it
        hands to the loop."""
        hv = self.hv
        self._loop = asyncio.get_running_loop()
        self._listener = listener
        self._answer = answer
        seed = self._seed if self._seed is not None else int.from_bytes(os.urandom(8), "little")
        with self.engine:
            truth = hv.truth
            self.engine.bind_host(
                hv.shm.mapping(),
                hv.flags_table(),
                -1 if truth is None else truth.fileno(),
                {code: json.dumps(name) for code, name in REASON_NAMES.items()},
                (seed * 0x9E3779B97F4A7C15 + 1) & 0xFFFFFFFFFFFFFFFF,
                hv.shm.unique_ids_offset(),
            )
            for dom in hv.domains.values():
                self.engine.set_identity(dom.domid, dom.truth_id)
            hv.identities = self.engine
            self.engine.enabled = self.applies(hv, self.xs)
        self._loop.add_reader(self.engine.notify_fd, self._notified)
        self.engine.start(listener.fileno())

    def _notified(self) -> None:
        engine = self.engine
        engine.clear_notify()
        # A full journal (a mass shutdown) is applied without the lock, which the thread
        # would otherwise wait for: only Python reads what it updates, and nothing else of
        # Python's runs before it is done.
        self._apply(*engine.take_now())
        with engine:  # a watcher the thread dropped is closed in this drain
            self.hv.shm.resync()  # the header only under the lock: the thread writes it
            request = engine.handoff()
            if request is not None:
                engine.answer(self._answer(request))

    def drain(self) -> None:
        """Python's objects brought up to date from the thread's journal (the lock held)."""
        self._apply(*self.engine.take())
        self.hv.shm.resync()

    def _apply(self, entries: list[tuple[int, int, int, int]], counts: tuple[int, ...]) -> None:
        hv = self.hv
        domains = hv.domains
        for kind, domid, flags, value in entries:
            if kind == J_STATE:
                dom = domains[domid]
                dom.flags = flags
                dom.cpu_time = value
            elif kind == J_ZOMBIE:
                domains[domid].zombie = True
            elif kind == J_FORGET:
                self.xs.domains.forgotten(domid)
            elif kind == J_REMOVE:  # nothing watched its nodes when the thread removed it
                dom = hv.forget(domid)
                self.toolstack.remove_domain(domid, dom.uuid)
            elif kind == J_DROP:
                for conn in list(self.xs.connections):
                    if conn.writer is not None and conn.writer.id == value:
                        conn.drop_watcher()
        last = self._last
        self._last = counts
        c = self.xs.counters
        c.release_firings += counts[0] - last[0]
        c.release_dom_firings += counts[1] - last[1]
        c.events += counts[2] - last[2]
        c.virqs += counts[3] - last[3]
        hv.virqs += counts[4] - last[4]

    def close(self) -> None:
        """Stop the thread (its clients closed), take in its last changes, forget the table
        and the truth log before they close."""
        engine = self.engine
        if engine.running:
            engine.stop()
        if self._loop is not None:
            self._loop.remove_reader(engine.notify_fd)
            self._loop = None
        with engine:
            engine.enabled = False
            self.hv.identities = None
            engine.release_host()
        if self._listener is not None:
            self._listener.close()
            self._listener = None
