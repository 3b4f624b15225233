"""`xenmux chaos`: a bounded run of the daemon on a simulated host under churn and faults,
checked by an oracle against the host's ground-truth log (docs/chaos.md).

Support side, like the bench: it may import the simulator and the bench; the product never
imports it.
"""
