"""Fan-out: domid -> subscribers, each event encoded once and the same bytes written to all.

The loop over the subscribers is `mux._fast.fan_out`: a subscriber whose `direct` is its
transport (nothing held back) gets the frame written there with no Python run for it; any
other takes its own `send_frame`, where its bounds and backlog are."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Protocol

from mux._fast import fan_out
from mux.protocol import KIND_BITS


class Event(Protocol):
    """What the fan-out reads of an event (mux._fast.Event, mux.reference.Event)."""

    seq: int
    kind: str
    domid: int

    def frame(self) -> bytes: ...


class Subscriber(Protocol):
    wild_mask: int
    # The transport a frame may be written to as it is, when nothing is held back for this
    # subscriber (then `last_out` is set to the event, as send_frame would); else None.
    direct: object | None
    last_out: object

    def send_frame(self, frame: bytes, event: Event) -> None:
        """Queue `event`'s frame. The event comes along for what is rare: a subscriber cut
        off reports its seq (reading it for every send would cost an int per event)."""
        ...


class Fanout:
    def __init__(self) -> None:
        # domid -> its (subscriber, mask) pairs, in subscription order. A tuple, not a dict:
        # at 32,000 domains with one subscriber each a one-entry dict costs 2.5x the bytes
        # (about 5 MB of the daemon's RSS), and publish walks the tuple without copying it.
        self.by_domid: dict[int, tuple[tuple[Subscriber, int], ...]] = {}
        self.wild: set[Subscriber] = set()
        self.subscriptions: dict[Subscriber, set[int]] = {}
        self.frames_sent = 0
        # Events published, indexed by their KIND_BITS value: counted by publish in a loop
        # of their own, apart from the C fan-out, so that bench/bench_recording.py can
        # measure the counters' cost by taking those statements out (docs/metrics.md).
        self.kind_counts = [0] * (max(KIND_BITS.values()) + 1)

    def subscribe(self, sub: Subscriber, domids: Iterable[int] | None, mask: int) -> None:
        """Add domids (None: every domain) with the kinds in `mask` for `sub`."""
        if domids is None:
            sub.wild_mask |= mask
            self.wild.add(sub)
            self.subscriptions.setdefault(sub, set())
            return
        mine = self.subscriptions.setdefault(sub, set())
        by_domid = self.by_domid
        for d in domids:
            pairs = by_domid.get(d, ())
            for i, (s, m) in enumerate(pairs):
                if s is sub:
                    by_domid[d] = (*pairs[:i], (sub, m | mask), *pairs[i + 1 :])
                    break
            else:
                by_domid[d] = (*pairs, (sub, mask))
            mine.add(d)

    def unsubscribe(self, sub: Subscriber, domids: Iterable[int] | None) -> None:
        if domids is None:
            sub.wild_mask = 0
            self.wild.discard(sub)
            return
        mine = self.subscriptions.get(sub, set())
        by_domid = self.by_domid
        for d in domids:
            pairs = by_domid.get(d)
            if pairs is not None:
                rest = tuple(p for p in pairs if p[0] is not sub)
                if not rest:
                    del by_domid[d]
                elif len(rest) != len(pairs):
                    by_domid[d] = rest
            mine.discard(d)

    def drop(self, sub: Subscriber) -> None:
        """Forget a subscriber entirely (its connection is gone)."""
        self.unsubscribe(sub, list(self.subscriptions.pop(sub, ())))
        sub.wild_mask = 0
        self.wild.discard(sub)

    def watched(self, sub: Subscriber) -> frozenset[int]:
        """The domids `sub` watches by name (its wildcard is apart)."""
        return frozenset(self.subscriptions.get(sub, ()))

    @property
    def subscriber_count(self) -> int:
        return len(self.subscriptions)

    def events_by_kind(self) -> dict[str, int]:
        """Events published so far, by kind."""
        counts = self.kind_counts
        return {kind: counts[bit] for kind, bit in KIND_BITS.items()}

    def publish(self, events: Sequence[Event]) -> int:
        """Send each event to every interested subscriber; returns frames written."""
        kind_counts = self.kind_counts
        for ev in events:
            kind_counts[KIND_BITS[ev.kind]] += 1
        sent = fan_out(events, self.by_domid, self.wild, self.subscriptions, KIND_BITS)
        self.frames_sent += sent
        return sent
