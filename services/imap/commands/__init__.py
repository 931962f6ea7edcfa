"""Command handlers, one module per command family. Each handler is
`async (session, command) -> Reply | None` (None = OK completed) and raises ImapError for NO/BAD.
Which command runs which handler, in which states, is the registry's (../registry.py)."""
