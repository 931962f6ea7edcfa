"""The mailstore core: every rule about mail lives here, split by use case over one set of stores.

    stores.py       the stores (metadata, blobs, events, quota), shared lookups and side effects
    quota.py        quota reservations and their self-repair
    auth.py         logins and their throttle
    accounts.py     accounts, domains, aliases; recipient and sender rules
    mailboxes.py    LIST, CREATE, DELETE, RENAME, SUBSCRIBE, STATUS
    delivery.py     DELIVER and APPEND: blob, then metadata, then events
    reading.py      metadata, body sections, SEARCH
    changes.py      flags, copy/move, expunge, the change log, events, leases
    maintenance.py  orphan sweep, change-log pruning, quota repair, integrity (fsck)
    facade.py       MailstoreCore: one attribute per use case

It answers with results.py's types and raises errors.py's; protobuf stays in ../translate.py
(except the section, search key and stored body structure, see ADR 0014).
"""

from mailstack.services.mailstore.core.changes import normalize_flags
from mailstack.services.mailstore.core.delivery import new_blob_key, settle, write_failed
from mailstack.services.mailstore.core.errors import AuthFailed, InvalidRequest, TooBig
from mailstack.services.mailstore.core.facade import MailstoreCore
from mailstack.services.mailstore.core.results import RecipientOutcome, RecipientVerdict

__all__ = [
    "AuthFailed",
    "InvalidRequest",
    "MailstoreCore",
    "RecipientOutcome",
    "RecipientVerdict",
    "TooBig",
    "new_blob_key",
    "normalize_flags",
    "settle",
    "write_failed",
]
