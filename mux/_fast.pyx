# cython: language_level=3
"""The hot path of xen-watch-mux (being built: see issue 3)."""
