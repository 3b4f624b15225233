"""The xenstore wire protocol and an asyncio client."""
