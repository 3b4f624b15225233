"""The fan-out's index: who gets which event, through subscribe, unsubscribe and drop.

Driven directly with recording subscribers: every case checks the frames each one was
handed, so the index's layout (tuples of pairs per domid) can change without its meaning.
"""

from __future__ import annotations

from dataclasses import dataclass

from mux.daemon.fanout import Fanout
from mux.protocol import DEATH, KIND_BITS, NEW, SHUTDOWN

ALL = sum(KIND_BITS.values())


@dataclass
class Ev:
    seq: int
    kind: str
    domid: int

    def frame(self) -> bytes:
        return f"{self.seq} {self.kind} {self.domid}\n".encode()


class Sub:
    def __init__(self, name: str, on_send=None) -> None:
        self.name = name
        self.wild_mask = 0
        self.direct = None  # never written to directly: every frame goes through send_frame
        self.got: list[tuple[int, str, int]] = []
        self.on_send = on_send

    def send_frame(self, frame: bytes, event: Ev) -> None:
        self.got.append((event.seq, event.kind, event.domid))
        if self.on_send is not None:
            self.on_send()


def test_a_second_subscribe_to_a_domid_adds_kinds_and_sends_once():
    f = Fanout()
    a = Sub("a")
    f.subscribe(a, [3], KIND_BITS[SHUTDOWN])
    f.subscribe(a, [3, 4], KIND_BITS[DEATH])
    sent = f.publish([Ev(1, SHUTDOWN, 3), Ev(2, DEATH, 3), Ev(3, NEW, 3), Ev(4, DEATH, 4)])
    assert a.got == [(1, SHUTDOWN, 3), (2, DEATH, 3), (4, DEATH, 4)]
    assert sent == 3 and f.frames_sent == 3
    assert f.watched(a) == frozenset({3, 4})


def test_subscribers_of_one_domid_get_it_in_subscription_order():
    f = Fanout()
    order: list[str] = []
    subs = [Sub(n, on_send=lambda n=n: order.append(n)) for n in "abc"]
    for s in subs:
        f.subscribe(s, [7], ALL)
    f.subscribe(subs[0], [7], KIND_BITS[NEW])  # a changed mask keeps its place
    f.publish([Ev(1, SHUTDOWN, 7)])
    assert order == ["a", "b", "c"]


def test_a_wildcard_subscriber_that_also_names_the_domid_gets_one_frame():
    f = Fanout()
    w = Sub("w")
    f.subscribe(w, None, KIND_BITS[SHUTDOWN])
    f.subscribe(w, [5], KIND_BITS[DEATH])
    f.publish([Ev(1, SHUTDOWN, 5), Ev(2, DEATH, 5), Ev(3, SHUTDOWN, 6), Ev(4, DEATH, 6)])
    # Named: its own mask or its wildcard's; elsewhere: the wildcard's alone.
    assert w.got == [(1, SHUTDOWN, 5), (2, DEATH, 5), (3, SHUTDOWN, 6)]


def test_unsubscribe_and_drop_leave_the_others():
    f = Fanout()
    a, b = Sub("a"), Sub("b")
    f.subscribe(a, [1, 2], ALL)
    f.subscribe(b, [1], ALL)
    f.unsubscribe(a, [1])
    f.publish([Ev(1, NEW, 1), Ev(2, NEW, 2)])
    assert a.got == [(2, NEW, 2)] and b.got == [(1, NEW, 1)]
    f.drop(b)
    f.unsubscribe(a, [2])
    assert f.publish([Ev(3, NEW, 1), Ev(4, NEW, 2)]) == 0
    assert f.by_domid == {} and f.subscriber_count == 1
    f.drop(a)
    assert f.subscriber_count == 0


def test_a_subscriber_dropped_by_a_send_misses_nothing_else_for_the_rest():
    f = Fanout()
    b = Sub("b")
    a = Sub("a", on_send=lambda: f.drop(b))  # as an overflow drops a connection mid-publish
    w = Sub("w")
    f.subscribe(a, [9], ALL)
    f.subscribe(b, [9], ALL)
    f.subscribe(w, None, ALL)
    f.publish([Ev(1, SHUTDOWN, 9), Ev(2, DEATH, 9)])
    assert a.got == [(1, SHUTDOWN, 9), (2, DEATH, 9)]
    assert w.got == [(1, SHUTDOWN, 9), (2, DEATH, 9)]
    # b was in the pairs being walked when it was dropped: it still got that first frame.
    assert b.got == [(1, SHUTDOWN, 9)]
