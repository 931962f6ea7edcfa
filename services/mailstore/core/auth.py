"""Authentication of every login of every frontend and every Send token check, throttled per
client IP and per account (ADR 0011)."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from mailstack.message import names
from mailstack.services.common.auth_throttle import AuthThrottle
from mailstack.services.common.config import Settings
from mailstack.services.mailstore import passwords
from mailstack.services.mailstore.core.errors import AuthFailed
from mailstack.services.mailstore.core.stores import Stores

MAX_PASSWORD_LENGTH = 1024

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Login:
    """Who proves a password (authcid) and, for a master login, whose mail it opens (target)."""

    authcid: str
    target: str = ""


class Authentication:
    def __init__(self, stores: Stores, settings: Settings) -> None:
        self.stores = stores
        self.settings = settings
        passwords.dummy_hash(settings.password_scrypt_log_n)  # a bad cost setting fails at start
        self.throttle = AuthThrottle(
            settings.auth_max_attempts_per_ip,
            settings.auth_max_attempts_per_account,
            settings.auth_failure_window,
            shared=stores.metadata,  # every process on this database counts the same failures (ADR 0046)
        )

    async def authenticate(self, username: str, password: str, authzid: str = "", remote_ip: str = "") -> str:
        """SASL PLAIN semantics (RFC 4616): authzid empty or the same account, or a master login
        (ADR 0037: `user*master`, or a master's authcid with the user as authzid).

        Throttled per client IP and per account (ADR 0011): the attempt takes its slot before the
        password is hashed and raises Throttled when the IP or the account has used up its window."""
        login = self._split_master(username, authzid)
        username = await self.login_address(login.authcid)
        try:
            name = names.normalize_address(username)
        except names.InvalidNameError:
            name = ""
        attempt = await self.throttle.acquire(remote_ip, name or username.strip().lower()[:320])
        try:
            account = await self._check_password(name, password)
            if login.target:
                account = await self._master_target(account, login.target, remote_ip)
            elif authzid:
                await self._check_authzid(account, authzid)
        except AuthFailed:
            attempt.failed()
            await self.throttle.tell_others(attempt, success=False)
            raise
        except BaseException:
            attempt.abandoned()  # an error or a cancelled call: nothing learnt, the slot goes back
            raise
        attempt.succeeded()
        await self.throttle.tell_others(attempt, success=True)
        return account

    async def _check_password(self, name: str, password: str) -> str:
        record = await self.stores.metadata.get_account(name) if name else None
        stored = record.password_hash if record else passwords.dummy_hash(self.settings.password_scrypt_log_n)
        ok = len(password) <= MAX_PASSWORD_LENGTH and await asyncio.to_thread(
            passwords.verify_password, password, stored
        )
        if not ok or record is None:
            raise AuthFailed("authentication failed")
        if passwords.needs_rehash(stored):
            await self._rehash(record.name, password)
        return record.name

    async def _rehash(self, name: str, password: str) -> None:
        """An imported hash becomes ours at the first successful login (ADR 0037). A failed write
        costs nothing but another try at the next login."""
        try:
            hashed = await asyncio.to_thread(passwords.hash_password, password, self.settings.password_scrypt_log_n)
            await self.stores.metadata.set_password(name, hashed)
        except Exception:
            log.warning("imported password hash not replaced", exc_info=True, extra={"account": name})
            return
        log.info("imported password hash replaced by scrypt", extra={"account": name})

    async def _check_authzid(self, account: str, authzid: str) -> None:
        """RFC 4616 §2: an authzid other than the authenticated account needs a master (below)."""
        if await self._normalized(authzid) != account:
            raise AuthFailed("authentication failed")

    def _masters(self) -> frozenset[str]:
        return frozenset(m.strip().lower() for m in self.settings.master_users.split(",") if m.strip())

    def _split_master(self, username: str, authzid: str) -> Login:
        """Dovecot's 'user*master' form, or SASL PLAIN with a master as authcid and the user as
        authzid. Both only when master users are configured; otherwise the login is ordinary."""
        if not self._masters():
            return Login(username)
        separator = self.settings.master_user_separator
        if separator and separator in username:
            target, master = username.rsplit(separator, 1)
            if target and master and not authzid:
                return Login(master, target)
        if authzid and authzid.strip().lower() != username.strip().lower():
            return Login(username, authzid)
        return Login(username)

    async def _master_target(self, master: str, target: str, remote_ip: str) -> str:
        """The master proved its own password; it may open the target only if the operator named it."""
        account = await self._normalized(target)
        if account == master:  # an authzid naming the user itself (RFC 4616 §2): an ordinary login
            return account
        masters = {await self._normalized(m) for m in self._masters()}
        if master not in masters:
            log.warning("master login refused: not a master user", extra={"login": master, "account": account})
            raise AuthFailed("authentication failed")
        if await self.stores.metadata.get_account(account) is None:
            raise AuthFailed("authentication failed")
        log.warning("master login", extra={"master": master, "account": account, "remote_ip": remote_ip})
        return account

    async def _normalized(self, login: str) -> str:
        try:
            return names.normalize_address(await self.login_address(login))
        except names.InvalidNameError:
            raise AuthFailed("authentication failed") from None

    async def login_address(self, username: str) -> str:
        """'alice' means alice@<login domain>, as clients configured with a bare user name expect."""
        if "@" in username or not username:
            return username
        domain = self.settings.login_domain
        if not domain:
            served = await self.stores.metadata.list_domains()
            domain = served[0] if len(served) == 1 else ""
        return f"{username}@{domain}" if domain else username
