"""The client commands: watch, wait, domains, stats, rescan (docs/commands.md)."""
