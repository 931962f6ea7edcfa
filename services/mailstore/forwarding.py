"""Forwarding (issue 18): mail for an account or alias also goes to outside addresses.

A forwarded copy is queued for the outbound worker like submitted mail, with:
- an SRS0 envelope sender at our domain (message/srs.py), so SPF checks our servers and not
  the original sender's; a bounce to that address comes back here and goes on, reversed, to
  the original sender (`reverse`), and only with a valid hash and day stamp;
- an ARC seal (RFC 8617) with our domain's DKIM key, vouching for what our MX found;
- the local copy kept or not, per forward. A forward with a kept copy goes out only once the
  copy is stored (a 4xx for the copy means the sender retries, and the forward with it).

Forwards are keyed by the address mail arrives for (an account's name or an alias; a
subaddress follows its base address): a forward of an account does not follow its aliases.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass

from mailstack.message import arc_seal, names
from mailstack.message.srs import Srs
from mailstack.services.mailstore.core import InvalidRequest, MailstoreCore, RecipientOutcome, RecipientVerdict
from mailstack.services.mailstore.core.subaddress import split
from mailstack.services.mailstore.sending import Sending
from mailstack.storage.metadata.base import ForwardRecord

log = logging.getLogger("mailstack.mailstore.forwarding")

MAX_TARGETS = 10
MAX_HOPS = 30  # Received fields beyond which a message is not forwarded again (a loop)
SRS_PREFIXES = ("srs0=", "srs1=")


@dataclass(frozen=True, slots=True)
class _Plan:
    local: list[int]  # indexes delivered to mailboxes
    forwards: dict[int, ForwardRecord]  # indexes forwarded
    bounces: dict[int, str]  # indexes that are our SRS addresses -> the original sender


class Forwarding:
    def __init__(self, core: MailstoreCore, sending: Sending) -> None:
        self.core = core
        self.sending = sending
        self.settings = core.settings
        self.srs = Srs(self.settings.srs_secret) if self.settings.srs_secret else None

    # ------------------------------------------------------------ administration

    async def set_forward(self, address: str, targets: Sequence[str], keep_copy: bool) -> ForwardRecord:
        """Set (or, without targets, remove) the forward of an account or alias."""
        address = _address(address)
        if not await self._is_account_or_alias(address):
            raise InvalidRequest(f"{address} is not an account or alias")
        clean = tuple(dict.fromkeys(_address(t) for t in targets))
        if len(clean) > MAX_TARGETS:
            raise InvalidRequest(f"at most {MAX_TARGETS} forward targets")
        if clean and self.srs is None:
            raise InvalidRequest("forwarding needs the srs_secret setting")
        for target in clean:
            verdict, _ = await self.core.accounts.resolve_recipient(target)
            if verdict != RecipientVerdict.NOT_LOCAL:  # a local target is an alias, and could loop
                raise InvalidRequest(f"{target} is not an outside address (use an alias)")
        record = ForwardRecord(address, clean, keep_copy)
        await self.core.stores.metadata.set_forward(record)
        return record

    async def list_forwards(self) -> list[ForwardRecord]:
        return await self.core.stores.metadata.list_forwards()

    async def _is_account_or_alias(self, address: str) -> bool:
        record = await self.core.stores.metadata.resolve_address(address)
        if record is None:
            return False
        return record.name == address or any(a == address for a, _ in await self.core.accounts.list_aliases())

    # ------------------------------------------------------------ RCPT and delivery

    async def reverse(self, address: str) -> str | None:
        """The original sender behind one of our SRS addresses (a bounce of forwarded mail): a valid
        hash and day stamp, at one of our domains or srs_domain (the hash does not cover the domain)."""
        address = address.strip().removeprefix("<").removesuffix(">")
        if self.srs is None or not address.lower().startswith(SRS_PREFIXES):
            return None
        domain = names.domain_of(address).lower()
        if domain != self.settings.srs_domain.lower() and domain not in await self.core.accounts.list_domains():
            return None
        return self.srs.reverse(address)

    async def deliver(
        self, sender: str, recipients: Sequence[str], data: bytes, mailbox_name: str = "INBOX"
    ) -> tuple[list[RecipientOutcome], str]:
        """core.delivery.deliver, with forwards and SRS bounces taken out and queued."""
        plan = await self._plan(recipients, data)
        if not plan.forwards and not plan.bounces:
            return await self.core.delivery.deliver(sender, recipients, data, mailbox_name)
        outcomes: dict[int, RecipientOutcome] = {}
        message_id = ""
        if plan.local:
            local = [recipients[i] for i in plan.local]
            results, message_id = await self.core.delivery.deliver(sender, local, data, mailbox_name)
            outcomes.update(zip(plan.local, results, strict=True))
        forwarded = [i for i, rule in plan.forwards.items() if not rule.keep_copy or _stored(outcomes.get(i))]
        if forwarded:
            via = plan.forwards[forwarded[0]].address
            targets = list(dict.fromkeys(t for i in forwarded for t in plan.forwards[i].targets))
            queued = await self._forward(sender, via, targets, data)
            message_id = message_id or queued
            for i in forwarded:
                outcomes.setdefault(i, RecipientOutcome(recipients[i], RecipientVerdict.LOCAL, via))
        for index, original in plan.bounces.items():
            queued = await self.sending.queue_remote("srs", "", [original], data)  # a bounce is never bounced
            outcomes[index] = RecipientOutcome(recipients[index], RecipientVerdict.LOCAL)
            message_id = message_id or queued
        return [outcomes[i] for i in range(len(recipients))], message_id

    async def _plan(self, recipients: Sequence[str], data: bytes) -> _Plan:
        addresses: dict[int, str] = {}
        bounces: dict[int, str] = {}
        for index, rcpt in enumerate(recipients):
            try:
                addresses[index] = names.normalize_address(rcpt)
            except names.InvalidNameError:
                continue  # deliver's own outcome (invalid)
            original = await self.reverse(rcpt)
            if original is not None:
                bounces[index] = original
        if self.srs is None or _hops(data) > MAX_HOPS:  # a loop is stored, not forwarded again
            return _Plan([i for i in range(len(recipients)) if i not in bounces], {}, bounces)
        keys = {index: self._keys(address) for index, address in addresses.items() if index not in bounces}
        rules = await self.core.stores.metadata.forwards_for([k for ks in keys.values() for k in ks])
        forwards = {i: rule for i, ks in keys.items() if (rule := next((rules[k] for k in ks if k in rules), None))}
        local = [i for i in range(len(recipients)) if i not in bounces and (i not in forwards or forwards[i].keep_copy)]
        return _Plan(local, forwards, bounces)

    def _keys(self, address: str) -> list[str]:
        sub = split(address, self.settings.subaddress_delimiter)
        return [address] if sub is None else [address, sub.base]

    async def _forward(self, sender: str, via: str, targets: list[str], data: bytes) -> str:
        """Queue the forwarded copy: SRS envelope sender, ARC seal; its queue id."""
        assert self.srs is not None
        domain = self.settings.srs_domain or names.domain_of(via)
        envelope_sender = self.srs.forward(sender, domain)
        key = self.sending.dkim_keys.get(domain)
        if key is not None:
            data = await asyncio.to_thread(arc_seal.seal, data, key, self.settings.hostname)
        queued = await self.sending.queue_remote(f"forward:{via}", envelope_sender, targets, data)
        log.info("forward id=%s via=%s sender=<%s> targets=%d sealed=%s", queued, via, envelope_sender,
                 len(targets), key is not None)  # fmt: skip
        return queued


def _address(text: str) -> str:
    try:
        return names.normalize_address(text)
    except names.InvalidNameError as err:
        raise InvalidRequest(str(err)) from None


def _stored(outcome: RecipientOutcome | None) -> bool:
    return outcome is not None and outcome.verdict == RecipientVerdict.LOCAL


def _hops(data: bytes) -> int:
    end = data.find(b"\r\n\r\n")
    head = b"\r\n" + data[: end if end >= 0 else len(data)].lower()
    return head.count(b"\r\nreceived:")
