"""The subscriber-facing commands: watch, wait, domains, stats."""
