"""Shared fixtures. Every process a test starts is stopped by its PID in the fixture.

The helper modules are plugins so that pytest rewrites their asserts too.
"""

pytest_plugins = ["simhelpers", "daemonhelpers"]
