"""Authentication of every login of every frontend and every Send token check, throttled per
client IP and per account (ADR 0011)."""

from __future__ import annotations

import asyncio

from mailstack.message import names
from mailstack.services.common.auth_throttle import AuthThrottle
from mailstack.services.common.config import Settings
from mailstack.services.mailstore import passwords
from mailstack.services.mailstore.core.errors import AuthFailed
from mailstack.services.mailstore.core.stores import Stores

MAX_PASSWORD_LENGTH = 1024


class Authentication:
    def __init__(self, stores: Stores, settings: Settings) -> None:
        self.stores = stores
        self.settings = settings
        passwords.dummy_hash(settings.password_scrypt_log_n)  # a bad cost setting fails at start
        self.throttle = AuthThrottle(
            settings.auth_max_attempts_per_ip, settings.auth_max_attempts_per_account, settings.auth_failure_window
        )

    async def authenticate(self, username: str, password: str, authzid: str = "", remote_ip: str = "") -> str:
        """SASL PLAIN semantics (RFC 4616): authzid empty or the same account.

        Throttled per client IP and per account (ADR 0011): the attempt takes its slot before the
        password is hashed and raises Throttled when the IP or the account has used up its window."""
        username = await self.login_address(username)
        try:
            name = names.normalize_address(username)
        except names.InvalidNameError:
            name = ""
        attempt = await self.throttle.acquire(remote_ip, name or username.strip().lower()[:320])
        try:
            account = await self._check_password(name, password, authzid)
        except AuthFailed:
            attempt.failed()
            raise
        except BaseException:
            attempt.abandoned()  # an error or a cancelled call: nothing learnt, the slot goes back
            raise
        attempt.succeeded()
        return account

    async def _check_password(self, name: str, password: str, authzid: str) -> str:
        record = await self.stores.metadata.get_account(name) if name else None
        stored = record.password_hash if record else passwords.dummy_hash(self.settings.password_scrypt_log_n)
        ok = len(password) <= MAX_PASSWORD_LENGTH and await asyncio.to_thread(
            passwords.verify_password, password, stored
        )
        if not ok or record is None:
            raise AuthFailed("authentication failed")
        if authzid:
            try:
                if names.normalize_address(await self.login_address(authzid)) != record.name:
                    raise AuthFailed("authentication failed")
            except names.InvalidNameError:
                raise AuthFailed("authentication failed") from None
        return record.name

    async def login_address(self, username: str) -> str:
        """'alice' means alice@<login domain>, as clients configured with a bare user name expect."""
        if "@" in username or not username:
            return username
        domain = self.settings.login_domain
        if not domain:
            served = await self.stores.metadata.list_domains()
            domain = served[0] if len(served) == 1 else ""
        return f"{username}@{domain}" if domain else username
