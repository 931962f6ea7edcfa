"""POP3 frontend (RFC 1939, 2449, 2595, 5034): pure protocol layer, session, asyncio server."""
