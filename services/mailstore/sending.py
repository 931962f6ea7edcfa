"""Sending: the Send API's rules, SMTP submission to remote recipients, and the outbound queue's
mailstore side (leases, reports, retry schedule, expiry, bounces). ADR 0008.

Local recipients are delivered at once through the core's deliver path; remote ones are queued
(the body in the blob store, referenced like a message's) for the outbound worker.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass

from mailstack.message import compose, dkim_sign, dsn, names
from mailstack.services.common.metrics import (
    OUTBOUND_BOUNCES,
    OUTBOUND_DEFERRALS,
    OUTBOUND_DELIVERIES,
    OUTBOUND_QUEUE_DEPTH,
    OUTBOUND_QUEUE_OLDEST,
    OUTBOUND_QUEUED,
    SEND_CALLS,
)
from mailstack.services.mailstore.core import (
    AuthFailed,
    InvalidRequest,
    MailstoreCore,
    RecipientVerdict,
    new_blob_key,
    settle,
    write_failed,
)
from mailstack.services.mailstore.core.results import RecipientOutcome as LocalOutcome
from mailstack.services.mailstore.sender_rules import (
    HeaderSenders,
    RateLimited,
    SenderRefused,
    SendingLimiter,
    header_senders,
    refused,
)
from mailstack.storage.errors import NotAllowed, StorageError
from mailstack.storage.queue.base import (
    EnqueueResult,
    LeasedOutbound,
    NewOutbound,
    NewRecipient,
    OutboundStatus,
    QueueBackend,
    RecipientOutcome,
    RecipientStatus,
    ReportResult,
    TokenRecord,
)

log = logging.getLogger("mailstack.mailstore.sending")

EXPIRE_EVERY = 60.0  # seconds between sweeps bouncing messages past their lifetime
DEPTH_EVERY = 1.0  # at most one queue-depth COUNT per second, however busy the queue
TOKEN_PREFIX = "mst_"
FROM_CHECKS = ("strict", "envelope", "off")  # submission_from_check


def hash_token(secret: str) -> str:
    # Tokens are 256 random bits: a plain SHA-256 cannot be brute-forced (unlike a password).
    return hashlib.sha256(secret.encode()).hexdigest()


def retry_delays(schedule: str) -> list[float]:
    delays = [float(x) for x in schedule.split(",") if x.strip()]
    if not delays or any(d < 0 for d in delays):
        raise ValueError(f"outbound_retry_schedule: {schedule!r}")
    return delays


def status_reason(error: str) -> str:
    """A metric label: the RFC 3463 status code of an error, bounded (a remote MTA picks the digits)."""
    if error.startswith("delivery time expired"):
        return "4.4.7"  # RFC 3463: delivery time expired (the last error follows it)
    code = dsn.status_code(error)
    klass, subject, detail = code.split(".")
    return code if int(subject) <= 7 and int(detail) <= 30 else f"{klass}.0.0"


@dataclass(frozen=True, slots=True)
class SendResult:
    message_id: str
    header_message_id: str
    status: OutboundStatus
    duplicate: bool


class Sending:
    def __init__(self, core: MailstoreCore, queue: QueueBackend) -> None:
        self.core = core
        self.queue = queue
        self.settings = core.settings
        self.delays = retry_delays(self.settings.outbound_retry_schedule)
        self.dkim_keys = dkim_sign.parse_keys(self.settings.dkim_keys)
        if (check := self.settings.submission_from_check) not in FROM_CHECKS:
            raise ValueError(f"submission_from_check: {check!r} is not one of {', '.join(FROM_CHECKS)}")
        window = self.settings.sending_rate_window
        self.submit_limits = SendingLimiter(
            window, self.settings.submission_rate_messages, self.settings.submission_rate_recipients
        )
        self.send_limits = SendingLimiter(window, self.settings.send_rate_messages, self.settings.send_rate_recipients)
        self._idempotency_locks: dict[tuple[str, str], tuple[asyncio.Lock, int]] = {}
        self._expirer: asyncio.Task[None] | None = None
        self._depth_task: asyncio.Task[None] | None = None
        self._depth_changed = asyncio.Event()
        self.deliver_local = core.delivery.deliver  # the server puts forwarding in front (issue 18)
        self.oldest_pending: float | None = None  # when the oldest pending message was queued (the age gauge)

    def _oldest_age(self) -> float:
        return 0.0 if self.oldest_pending is None else max(0.0, time.time() - self.oldest_pending)

    @classmethod
    def open(cls, core: MailstoreCore) -> Sending:
        return cls(core, core.open_queue())

    def start_background(self) -> None:
        if self._expirer is None:
            self._expirer = asyncio.create_task(self._expire_forever(), name="outbound-expirer")
        if self._depth_task is None:
            OUTBOUND_QUEUE_OLDEST.set_function(self._oldest_age)  # ages between reads of the queue
            self._depth_changed.set()
            self._depth_task = asyncio.create_task(self._track_depth_forever(), name="outbound-queue-depth")

    async def close(self) -> None:
        for task in (self._expirer, self._depth_task):
            if task is not None:
                task.cancel()
                try:
                    await task
                except asyncio.CancelledError:
                    pass
        self._expirer = self._depth_task = None

    # ------------------------------------------------------------ tokens

    async def create_token(
        self, name: str, domains: Sequence[str], addresses: Sequence[str]
    ) -> tuple[TokenRecord, str]:
        if not name or any(c.isspace() for c in name):
            raise InvalidRequest("a token needs a name without spaces")
        domains = [d.strip().lower() for d in domains if d.strip()]
        addresses = [names.normalize_address(a) for a in addresses if a.strip()]
        if not domains and not addresses:
            raise InvalidRequest("a token needs at least one from domain or from address")
        secret = TOKEN_PREFIX + secrets.token_urlsafe(32)
        record = TokenRecord(name, tuple(domains), tuple(addresses), time.time())
        await self.queue.create_token(record, hash_token(secret))
        return record, secret

    async def check_token(self, secret: str, remote_ip: str = "") -> TokenRecord:
        """The token's record; a wrong token counts against the caller's IP like a failed login
        (ADR 0011), and past the limit even a right one is refused (Throttled) until the window moves."""
        attempt = await self.core.auth.throttle.acquire(remote_ip, "")
        try:
            record = await self.queue.token_by_hash(hash_token(secret)) if secret else None
        except BaseException:
            attempt.abandoned()
            raise
        if record is None:
            attempt.failed()
            await self.core.auth.throttle.tell_others(attempt, success=False)
            raise AuthFailed("missing or unknown API token")
        attempt.succeeded()
        return record

    async def list_tokens(self) -> list[TokenRecord]:
        return await self.queue.list_tokens()

    async def revoke_token(self, name: str) -> None:
        await self.queue.revoke_token(name)

    @staticmethod
    def may_send_as(token: TokenRecord, address: str) -> bool:
        address = address.lower()
        return address in token.from_addresses or address.rsplit("@", 1)[-1] in token.from_domains

    # ------------------------------------------------------------ Send (other services)

    async def send(
        self,
        token: TokenRecord,
        *,
        structured: object | None,
        raw: bytes,
        envelope_from: str,
        recipients: Sequence[str],
        idempotency_key: str,
        save_sent_copy: bool,
    ) -> SendResult:
        try:
            result = await self._send(token, structured, raw, envelope_from, recipients, idempotency_key,
                                      save_sent_copy)  # fmt: skip
        except NotAllowed:
            SEND_CALLS.labels("refused").inc()
            raise
        except RateLimited:
            SEND_CALLS.labels("rate_limited").inc()
            raise
        except InvalidRequest:
            SEND_CALLS.labels("invalid").inc()
            raise
        except Exception:
            SEND_CALLS.labels("error").inc()
            raise
        SEND_CALLS.labels("duplicate" if result.duplicate else "accepted").inc()
        return result

    async def _send(
        self,
        token: TokenRecord,
        structured: object | None,
        raw: bytes,
        envelope_from: str,
        recipients: Sequence[str],
        idempotency_key: str,
        save_sent_copy: bool,
    ) -> SendResult:
        from mailstack.v1 import send_pb2 as spb

        client = f"token:{token.name}"
        try:
            if isinstance(structured, spb.StructuredMessage):
                composed = compose.build(structured)
                data, message_id, default_recipients = composed.data, composed.message_id, composed.recipients
                senders = await self._header_senders("send", client, data)
            else:
                if not raw:
                    raise InvalidRequest("give a structured message or raw bytes")
                senders = await self._header_senders("send", client, raw)  # before the stdlib reads it below
                info = compose.raw_info(raw)
                data, message_id = compose.complete_raw(raw, info)
                default_recipients = info.recipients
        except compose.ComposeError as exc:
            raise InvalidRequest(str(exc)) from None
        # The token is checked against the composed message as ENVELOPE will show it (issue 13 §3).
        from_address = senders.from_address
        if not from_address:
            raise InvalidRequest("the message needs a From address")
        sender = envelope_from or from_address
        for address in dict.fromkeys([*senders.addresses, sender]):
            if not self.may_send_as(token, address):
                refused("send", "sender", client, f"may not send as {address}")
                raise SenderRefused(f"token {token.name} may not send from {address}")
        rcpts = list(recipients) or default_recipients
        self._take(self.send_limits, "send", client, rcpts)
        return await self._submit(client, sender, from_address, rcpts, data, message_id, idempotency_key,
                                  save_sent_copy)  # fmt: skip

    @staticmethod
    async def _header_senders(api: str, client: str, data: bytes) -> HeaderSenders:
        try:
            # Off the event loop for big messages, as the core parses them (a huge header takes ms).
            return await asyncio.to_thread(header_senders, data) if len(data) > 256 * 1024 else header_senders(data)
        except SenderRefused as exc:
            refused(api, "header", client, str(exc))
            raise

    @staticmethod
    def _take(limits: SendingLimiter, api: str, client: str, recipients: Sequence[str]) -> None:
        try:
            limits.take(client, len(set(recipients)))
        except RateLimited as exc:
            refused(api, "rate", client, str(exc))
            raise

    # ------------------------------------------------------------ Submit (SMTP submission)

    async def submit(self, account: str, sender: str, recipients: Sequence[str], data: bytes) -> SendResult:
        client = f"smtp:{account}"
        await self._check_submission(client, account, sender, data)
        if not recipients:
            raise InvalidRequest("no recipients")
        self._take(self.submit_limits, "submission", client, recipients)
        try:
            info = compose.raw_info(data)
            from_address, message_id = info.from_address, info.message_id
        except compose.ComposeError:
            from_address, message_id = sender, ""
        return await self._submit(
            client,
            sender,
            from_address,
            recipients,
            data,
            message_id,
            "",
            self.settings.save_sent_copies,
            account=account,
        )

    async def _check_submission(self, client: str, account: str, sender: str, data: bytes) -> None:
        """The envelope sender and (strict) the header From and Sender must be the account's own
        addresses or aliases, as Postfix's reject_sender_login_mismatch does for the envelope.
        Checked here, not only in the SMTP frontend: every caller of Submit passes this way.
        A message without From passes: no one is impersonated (RFC 6409 §8.1)."""
        mode = self.settings.submission_from_check
        if mode == "off":
            return
        addresses = [sender] if sender else []
        if mode == "strict":
            addresses += (await self._header_senders("submission", client, data)).addresses
        for address in dict.fromkeys(a.lower() for a in addresses):
            if not await self.core.accounts.check_sender(account, address):
                refused("submission", "sender", client, f"may not send as {address}")
                raise SenderRefused(f"{address} is not an address of the authenticated user")

    async def _submit(
        self,
        client: str,
        sender: str,
        from_address: str,
        recipients: Sequence[str],
        data: bytes,
        message_id: str,
        idempotency_key: str,
        save_sent_copy: bool,
        account: str = "",
    ) -> SendResult:
        if not recipients:
            raise InvalidRequest("no recipients")
        args = (client, sender, from_address, recipients, data, message_id, idempotency_key, save_sent_copy, account)
        if not idempotency_key:
            return await self._submit_locked(*args)
        # Calls with one key run one after the other in this replica, so a retry racing the first
        # call finds its result instead of delivering locally twice (the unique index guards the queue).
        key = (client, idempotency_key)
        lock, users = self._idempotency_locks.get(key, (asyncio.Lock(), 0))
        self._idempotency_locks[key] = (lock, users + 1)
        try:
            async with lock:
                return await self._submit_locked(*args)
        finally:
            lock, users = self._idempotency_locks[key]
            if users == 1:
                del self._idempotency_locks[key]
            else:
                self._idempotency_locks[key] = (lock, users - 1)

    async def _submit_locked(
        self,
        client: str,
        sender: str,
        from_address: str,
        recipients: Sequence[str],
        data: bytes,
        message_id: str,
        idempotency_key: str,
        save_sent_copy: bool,
        account: str,
    ) -> SendResult:
        if idempotency_key and (earlier := await self._earlier_result(client, idempotency_key)) is not None:
            return earlier
        self.core.delivery.check_size(len(data))
        data = await self._signed(from_address, data)
        local, remote = await self._split_recipients(recipients)
        plan = await self._deliver_locally(sender, recipients, local, remote, data)
        blob_key = new_blob_key()
        queue_id = blob_key.replace("-", "")[:26]
        if not remote and client.startswith("smtp:"):
            return await self._submitted_locally(client, sender, queue_id, plan, data, message_id, save_sent_copy,
                                                 account or from_address)  # fmt: skip
        item = NewOutbound(
            id=queue_id,
            sender=sender,
            blob_key=blob_key,
            size=len(data),
            recipients=plan,
            client=client,
            idempotency_key=idempotency_key,
            message_id_header=message_id,
            original_headers=compose.header_block(data),
        )
        result = await self._enqueue(item, data, bool(remote))
        if not result.duplicate:
            await self._after_enqueue(client, sender, plan, len(remote), result.id)
        if save_sent_copy:
            await self._save_sent(account or from_address, data)
        status = await self.queue.status(result.id)
        assert status is not None
        log.info("send", extra={"message_id": result.id, "client": client, "sender": f"<{sender}>",
                                "local": len(local), "remote": len(remote), "size": len(data)})  # fmt: skip
        return SendResult(result.id, message_id, status, result.duplicate)

    async def _earlier_result(self, client: str, idempotency_key: str) -> SendResult | None:
        """The result of an earlier call with this key (a retry), if there was one."""
        existing = await self.queue.find_idempotent(client, idempotency_key)
        if existing is None:
            return None
        status = await self.queue.status(existing)
        assert status is not None
        return SendResult(existing, status.message_id_header, status, True)

    async def _signed(self, from_address: str, data: bytes) -> bytes:
        """DKIM-signed (RFC 6376) when a key is configured for the From domain."""
        key = self.dkim_keys.get(from_address.rsplit("@", 1)[-1].lower())
        return data if key is None else await asyncio.to_thread(dkim_sign.sign, data, key)

    async def _split_recipients(self, recipients: Sequence[str]) -> tuple[list[str], list[str]]:
        """(local, remote) recipients, each once; an invalid address refuses the whole call."""
        local: list[str] = []
        remote: list[str] = []
        for rcpt in dict.fromkeys(recipients):
            where, _ = await self.core.accounts.resolve_recipient(rcpt)
            if where == RecipientVerdict.NOT_LOCAL:
                remote.append(rcpt)
            elif where == RecipientVerdict.INVALID:
                raise InvalidRequest(f"invalid recipient address {rcpt!r}")
            else:
                local.append(rcpt)
        return local, remote

    async def _deliver_locally(
        self, sender: str, recipients: Sequence[str], local: list[str], remote: list[str], data: bytes
    ) -> list[NewRecipient]:
        """Local recipients get the message now; the plan says what became of each recipient."""
        outcomes: dict[str, NewRecipient] = {}
        if local:
            results, _ = await self.deliver_local(sender, local, data)
            outcomes.update((r.recipient, _local_plan(r)) for r in results)
        for rcpt in remote:
            outcomes[rcpt] = NewRecipient(rcpt, False, "queued")
        return [outcomes[r] for r in dict.fromkeys(recipients)]

    async def queue_remote(self, client: str, sender: str, recipients: Sequence[str], data: bytes) -> str:
        """Queue a message this server relays (forwarding, issue 18) for remote recipients; its id."""
        blob_key = new_blob_key()
        plan = [NewRecipient(r, False, "queued") for r in recipients]
        item = NewOutbound(id=blob_key.replace("-", "")[:26], sender=sender, blob_key=blob_key, size=len(data),
                           recipients=plan, client=client, original_headers=compose.header_block(data))  # fmt: skip
        result = await self._enqueue(item, data, True)
        await self._after_enqueue(client, sender, plan, len(plan), result.id)
        return result.id

    async def _enqueue(self, item: NewOutbound, data: bytes, remote: bool) -> EnqueueResult:
        if remote:
            await self.core.delivery.put_body(item.blob_key, data)  # blob first; the enqueue's reference keeps it
        # Shielded as the core's delivery write: a caller gone mid-enqueue must not delete a
        # body the queue may have committed a reference to.
        write = asyncio.ensure_future(self.queue.enqueue(item, time.time()))
        try:
            return await settle(write)
        except BaseException:
            if remote and write_failed(write):
                await self.core.delivery.delete_bodies([item.blob_key])
            raise

    async def _after_enqueue(
        self, client: str, sender: str, plan: list[NewRecipient], remote: int, queue_id: str
    ) -> None:
        """Counters and the queue-depth nudge for a newly queued message; a DSN for the local
        recipients that failed when SMTP already answered 250 for them (accepted at RCPT)."""
        failed_local = [r for r in plan if r.state == "bounced"]
        OUTBOUND_QUEUED.inc(remote)
        for r in failed_local:
            OUTBOUND_BOUNCES.labels(status_reason(r.error)).inc()
        if remote:
            self._depth_changed.set()
        if failed_local and sender and client.startswith("smtp:"):
            queued = await self.queue.status(queue_id)
            if queued is not None:
                bounced = [r for r in queued.recipients if r.state == "bounced"]
                await self._bounce(queued, ReportResult(False, bounced, []))

    async def _submitted_locally(
        self,
        client: str,
        sender: str,
        queue_id: str,
        plan: list[NewRecipient],
        data: bytes,
        message_id: str,
        save_sent_copy: bool,
        owner: str,
    ) -> SendResult:
        """An SMTP submission to local recipients only (all of them go through Submit since issue 13):
        stored already, so no queue row is kept for it; only a Send token could read one."""
        now = time.time()
        recipients = [RecipientStatus(r.address, True, r.state, 0, r.error, "", 0.0, now) for r in plan]
        status = OutboundStatus(queue_id, sender, now, message_id, compose.header_block(data), True, recipients)
        bounced = [r for r in recipients if r.state == "bounced"]
        for r in bounced:
            OUTBOUND_BOUNCES.labels(status_reason(r.last_error)).inc()
        if bounced and sender:  # SMTP answered 250 at RCPT for these: the sender hears of it by DSN
            await self._bounce(status, ReportResult(False, bounced, []))
        if save_sent_copy:
            await self._save_sent(owner, data)
        log.info("send", extra={"message_id": queue_id, "client": client, "sender": f"<{sender}>",
                                "local": len(plan), "remote": 0, "size": len(data)})  # fmt: skip
        return SendResult(queue_id, message_id, status, False)

    async def _save_sent(self, account: str, data: bytes) -> None:
        try:
            mailboxes, _ = await self.core.mailboxes.list_mailboxes(account)
        except StorageError:
            return  # not a local account: nowhere to keep a copy
        sent = next((m.name for m in mailboxes if m.special_use == "\\Sent"), None)
        if sent is not None:
            await self.core.delivery.append(account, sent, data, ["\\Seen"], None)

    async def status(self, message_id: str) -> OutboundStatus | None:
        return await self.queue.status(message_id)

    # ------------------------------------------------------------ the worker's side

    async def leased_body(self, message_id: str, worker: str) -> bytes:
        """The body of a message `worker` holds the lease of (NotAllowed otherwise)."""
        return await self.core.reading.read_body(await self.queue.leased_blob(message_id, worker))

    async def lease(self, worker: str, limit: int, ttl: float) -> list[LeasedOutbound]:
        if not worker:
            raise InvalidRequest("a worker name is required")
        return await self.queue.lease_next(worker, ttl, time.time(), max(1, min(limit, 1000)))

    async def report(self, message_id: str, worker: str, attempts: Sequence[tuple[str, str, str, str]]) -> None:
        """attempts: (recipient, "delivered" | "temporary" | "permanent", reply, remote mta)."""
        status = await self.queue.status(message_id)
        if status is None:
            raise NotAllowed(f"no queued message {message_id}")
        now = time.time()
        tries = {r.address: r.attempts for r in status.recipients}
        expired = now - status.created >= self.settings.outbound_max_lifetime
        outcomes = []
        for recipient, outcome, reply, mta in attempts:
            if outcome == "delivered":
                outcomes.append(RecipientOutcome(recipient, "delivered", reply, mta))
            elif outcome == "permanent":
                outcomes.append(RecipientOutcome(recipient, "bounced", reply, mta))
            elif expired:
                outcomes.append(RecipientOutcome(recipient, "bounced", f"delivery time expired; last error: {reply}",
                                                 mta))  # fmt: skip
            else:
                delay = self.delays[min(tries.get(recipient, 0), len(self.delays) - 1)]
                outcomes.append(RecipientOutcome(recipient, "deferred", reply, mta, now + delay))
        result = await self.queue.report(message_id, worker, outcomes, now)
        for o in outcomes:  # counted once the report is taken (a lost lease's is refused)
            if o.state == "delivered":
                OUTBOUND_DELIVERIES.inc()
            elif o.state == "deferred":
                OUTBOUND_DEFERRALS.labels(status_reason(o.error)).inc()
        await self._after_report(status, result)

    async def _after_report(self, status: OutboundStatus, result: ReportResult) -> None:
        for bounced in result.newly_bounced:
            OUTBOUND_BOUNCES.labels(status_reason(bounced.last_error)).inc()
        if result.done:
            self._depth_changed.set()
        if result.freed_blobs:
            await self.core.delivery.delete_bodies(result.freed_blobs)
        if result.newly_bounced and status.sender:  # RFC 3464 §2: never a DSN for the null sender
            await self._bounce(status, result)

    async def _bounce(self, status: OutboundStatus, result: ReportResult) -> None:
        arrival = compose.rfc5322_date(status.created)
        report = dsn.build_dsn(self.settings.hostname, status.sender, result.newly_bounced,
                               status.original_headers, arrival)  # fmt: skip
        try:
            await self._submit("dsn", "", f"MAILER-DAEMON@{self.settings.hostname}", [status.sender], report, "", "",
                               False)  # fmt: skip
        except Exception:
            log.exception("bounce not sent", extra={"message_id": status.id, "sender": f"<{status.sender}>"})

    async def expire(self) -> int:
        now = time.time()
        expired = await self.queue.expire(now - self.settings.outbound_max_lifetime, now)
        for message_id, result in expired:
            status = await self.queue.status(message_id)
            if status is not None:
                await self._after_report(status, result)
        return len(expired)

    async def _expire_forever(self) -> None:
        while True:
            await asyncio.sleep(EXPIRE_EVERY)
            try:
                # One replica at a time (its lease); the queue's row locks would keep two apart anyway.
                await self.core.maintenance.lead_round("outbound-expiry", EXPIRE_EVERY, self.expire)
            except Exception:
                log.exception("outbound expiry sweep failed")
            self._depth_changed.set()  # also catches what other mailstore replicas changed

    async def _track_depth_forever(self) -> None:
        """Keeps the queue-depth gauge fresh off the RPC path: a COUNT on SQLite's reader pool after
        the queue changed, at most once per DEPTH_EVERY, never on the event loop itself."""
        while True:
            await self._depth_changed.wait()
            self._depth_changed.clear()
            try:
                OUTBOUND_QUEUE_DEPTH.set(await self.queue.queue_depth())
                self.oldest_pending = await self.queue.oldest_pending()
            except Exception:
                log.exception("outbound queue depth not read")
            await asyncio.sleep(DEPTH_EVERY)


_LOCAL_FAILURES = {
    RecipientVerdict.UNKNOWN: "550 5.1.1 no such local user",
    RecipientVerdict.OVER_QUOTA: "552 5.2.2 mailbox full",
    RecipientVerdict.TOO_BIG_FOR_QUOTA: "552 5.2.2 message larger than the mailbox quota",
}


def _local_plan(result: LocalOutcome) -> NewRecipient:
    if result.verdict == RecipientVerdict.LOCAL:
        return NewRecipient(result.recipient, True, "delivered")
    reason = _LOCAL_FAILURES.get(result.verdict, "451 4.3.0 local delivery failed")
    return NewRecipient(result.recipient, True, "bounced", reason)
