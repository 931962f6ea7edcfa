"""The errors the mailstore core raises: its own, and the storage errors it lets through (each
names a domain condition, never a backend's; translate.py maps every one to a gRPC status)."""

from __future__ import annotations

from mailstack.services.common.auth_throttle import Throttled
from mailstack.storage.errors import (
    AccountNotFound,
    AlreadyExists,
    BlobNotFound,
    HasChildren,
    InvalidName,
    MailboxNotFound,
    NotAllowed,
    NotFound,
    OverQuota,
    StorageError,
    StorageUnavailable,
)

__all__ = [
    "AccountNotFound",
    "AlreadyExists",
    "AuthFailed",
    "BlobNotFound",
    "HasChildren",
    "InvalidName",
    "InvalidRequest",
    "MailboxNotFound",
    "NotAllowed",
    "NotFound",
    "OverQuota",
    "StorageError",
    "StorageUnavailable",
    "Throttled",
    "TooBig",
]


class AuthFailed(Exception):
    """Wrong credentials; deliberately says nothing about whether the account exists."""


class TooBig(Exception):
    pass


class InvalidRequest(Exception):
    pass
