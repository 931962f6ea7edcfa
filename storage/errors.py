"""Errors every storage backend raises; the mailstore maps them to gRPC status codes."""


class StorageError(Exception):
    """Base of all storage errors."""


class StorageUnavailable(StorageError):
    """The backend is down or timed out; the caller may retry later (UNAVAILABLE)."""


class NotFound(StorageError):
    """Something named does not exist."""


class BlobNotFound(NotFound):
    pass


class AccountNotFound(NotFound):
    pass


class MailboxNotFound(NotFound):
    pass


class AlreadyExists(StorageError):
    pass


class InvalidName(StorageError):
    pass


class NotAllowed(StorageError):
    """The operation is refused on this object (e.g. deleting INBOX)."""


class HasChildren(StorageError):
    pass


class OverQuota(StorageError):
    """The account's byte or message limit would be exceeded."""
