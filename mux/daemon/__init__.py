"""The asyncio shell around the scanner: watcher, scan loop, fan-out, and the socket.

service.py is the composition root and the only module that knows them all: watcher.py
(xenstored's watches), scanloop.py (hypercall + diff), fanout.py (events to subscribers),
listener.py (the socket and its peers), connection.py (one client), requests.py (the op
table), stats.py and metrics.py (the counters and their Prometheus view), main.py (`xenmux
serve`); the durable stream: durable.py (the state restored, the checkpoints), statedir.py
(the locked directory and its history), journal.py (every event on disk, replay by cursor),
tablestate.py (the table's dump, load and replay).
"""
