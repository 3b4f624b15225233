"""xen-watch-mux: one @releaseDomain watcher per Xen host, per-domid events to subscribers."""

__version__ = "0.1.0"
