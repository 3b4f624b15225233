# The fan-out's inner loop in C (mux/daemon/fanout.py's Fanout.publish): each event's frame,
# encoded once, goes to every interested subscriber; to a connection with nothing held back
# (`direct`, its transport) it is written straight to that transport, with no Python code
# run per subscriber. Anything else (output held, a latest-mode backlog, a closing
# connection: `direct` is None) takes the subscriber's own send_frame, where its bounds are.


cdef inline void _send_one(object sub, object frame, object ev) except *:
    transport = sub.direct
    if transport is not None:
        transport.write(frame)
        sub.last_out = ev
    else:
        sub.send_frame(frame, ev)


def fan_out(events, dict by_domid, set wild, dict subscriptions, dict kind_bits) -> int:
    """Send each event of `events` to every subscriber of its domid whose mask (or wildcard
    mask) has its kind, then to the wildcard subscribers not already served; returns the
    number of frames sent. `by_domid` is {domid: ((subscriber, mask), ...)}, `wild` the
    wildcard subscribers, `subscriptions` {subscriber: the domids it names}, `kind_bits`
    {kind: bit} (mux.protocol.KIND_BITS)."""
    cdef Py_ssize_t sent = 0
    cdef long bit
    cdef tuple targets
    for ev in events:
        bit = kind_bits[ev.kind]
        frame = None
        targets = by_domid.get(ev.domid)
        if targets:
            # No copy: a send that cuts its subscriber off replaces the domid's tuple, never
            # changes this one.
            for sub, mask in targets:
                if ((<long>mask) | (<long>sub.wild_mask)) & bit:
                    if frame is None:
                        frame = ev.frame()
                    _send_one(sub, frame, ev)
                    sent += 1
        if wild:
            for sub in list(wild):
                # Named too: served above, or its own mask refused the event.
                if (<long>sub.wild_mask) & bit and not (
                        targets and ev.domid in subscriptions.get(sub, ())):
                    if frame is None:
                        frame = ev.frame()
                    _send_one(sub, frame, ev)
                    sent += 1
    return sent
