"""mailstack: SMTP, IMAP and POP3 frontends over a gRPC mailstore."""

__version__ = "0.1.0"
