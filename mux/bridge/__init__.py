"""The pool-wide stream: every host's domain events on NATS JetStream (docs/pool.md).

`xenmux bridge` (one per host, next to `serve`) follows its daemon's stream and publishes
each event exactly once, in the host's order, to a JetStream stream, and keeps a KV bucket
as the pool's current table; `xenmux pool watch/domains/wait` read them. The product side of
it: the bridge talks to its daemon through mux.client only (mux/bridge/feed.py).
"""
