"""IMAP4rev1/IMAP4rev2 frontend: pure protocol layer, command families, session state and asyncio server."""
