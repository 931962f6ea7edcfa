"""Subaddresses (RFC 5233): "user+detail@domain" is delivered as "user@domain".

Pure functions over normalized addresses; the delimiter is the operator's setting
(`subaddress_delimiter`, "+" by default, empty = off), as Postfix's recipient_delimiter.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from mailstack.message import names
from mailstack.services.mailstore.core.results import AccountRecord
from mailstack.storage.metadata.base import DeliveryTarget, MetadataStore

INBOX = "INBOX"


@dataclass(frozen=True)
class Subaddress:
    base: str  # "user@domain"
    detail: str  # "tag" (RFC 5233 §2: the "detail" part), may be empty ("user+@domain")


def split(address: str, delimiter: str) -> Subaddress | None:
    """The base address and detail of `address`, or None when it has no detail part.

    RFC 5233 §2: the detail starts at the first delimiter of the local part; a local part
    that starts with the delimiter ("+tag@domain") has no user and is not a subaddress."""
    if not delimiter:
        return None
    local, at, domain = address.rpartition("@")
    if not at:
        return None
    user, sep, detail = local.partition(delimiter)
    if not sep or not user or user.startswith('"'):  # a quoted local part is taken whole
        return None
    return Subaddress(f"{user}@{domain}", detail)


def folder_of(recipient: str, delimiter: str) -> str | None:
    """The folder a subaddress names, from the recipient as the client wrote it (addresses are
    lower-cased when normalized, folder names are not), or None when it names no valid folder."""
    sub = split(recipient.strip().removeprefix("<").removesuffix(">"), delimiter)
    if sub is None or not sub.detail:
        return None
    try:
        return names.normalize_mailbox_name(sub.detail)
    except names.InvalidNameError:
        return None


async def resolve_account(metadata: MetadataStore, address: str, delimiter: str) -> AccountRecord | None:
    """The account mail for the normalized `address` goes to: an account named so, else the
    base address's account, alias or catch-all, else an alias that holds the detail."""
    whole = await metadata.resolve_address(address)
    sub = split(address, delimiter)
    if sub is None or (whole is not None and whole.name == address):
        return whole
    base = await metadata.resolve_address(sub.base)
    return base if base is not None else whole


async def resolve_delivery(
    metadata: MetadataStore,
    addresses: Sequence[str],
    recipients: Sequence[str],
    mailbox_name: str,
    delimiter: str,
    folders: bool,
) -> list[DeliveryTarget | None]:
    """metadata.resolve_delivery with subaddresses resolved as resolve_account does; with
    `folders`, mail for user+tag that would go to INBOX goes to the folder "tag" when it exists.
    `recipients` are the addresses as written (for the folder's case). One read when no
    address has a detail, one more per distinct folder otherwise."""
    targets = await metadata.resolve_delivery(addresses, mailbox_name)
    groups: dict[str, list[tuple[int, str]]] = {}
    for index, address in enumerate(addresses):
        sub = split(address, delimiter)
        target = targets[index]
        if sub is None or (target is not None and target.account.name == address):
            continue
        folder = folder_of(recipients[index], delimiter) if folders and mailbox_name == INBOX else None
        groups.setdefault(folder or mailbox_name, []).append((index, sub.base))
    for folder, members in groups.items():
        found = await metadata.resolve_delivery([base for _, base in members], folder)
        for (index, _), target in zip(members, found, strict=True):
            if target is not None:
                targets[index] = target
    return targets
