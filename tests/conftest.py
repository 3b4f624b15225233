"""Shared fixtures. Every process a test starts is stopped by its PID in the fixture."""
