"""mailstack: SMTP, IMAP and POP3 frontends over a gRPC mailstore."""

from importlib import metadata

try:
    # The one place the version comes from: the installed package's metadata (pyproject.toml).
    __version__ = metadata.version("mailstack")
except metadata.PackageNotFoundError:  # a source tree that was never installed
    __version__ = "0+unknown"
