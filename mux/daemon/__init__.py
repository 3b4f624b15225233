"""The asyncio shell: watcher, scanner loop, fan-out, server."""
