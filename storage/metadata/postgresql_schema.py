"""Versioned PostgreSQL schema for the metadata store and the outbound queue (ADR 0027).

The table `schema_version` holds one row per applied step. Steps run under a transaction-scoped
advisory lock, so replicas that start at the same moment apply each step exactly once: the
first takes the lock and migrates, the others wait, then find nothing left to do.
Add a step by appending to MIGRATIONS; never edit a step that has shipped.

The tables mirror sqlite_schema.py (same columns, same meaning) so that rows move between the two
verbatim; the differences: BIGINT identities, BYTEA, a sequence for UIDVALIDITY, and text columns
that are names use the "C" collation so that ordering and equality are byte-wise as in SQLite,
whatever the database's default collation.
"""

from typing import Any

from mailstack.storage.errors import StorageError

# pg_advisory_xact_lock key: "mailstack" in ASCII, read as an integer (any fixed 64-bit number would do).
MIGRATION_LOCK = 0x6D61696C737461

MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        # UIDVALIDITY: seeded from the clock, then strictly increasing and never reused (a sequence
        # never hands a value out twice, even on rollback, and takes no row lock).
        "CREATE SEQUENCE uidvalidity_seq MINVALUE 1 MAXVALUE 4294967295",
        "SELECT setval('uidvalidity_seq', GREATEST(EXTRACT(EPOCH FROM now())::bigint, 1))",
        """CREATE TABLE accounts (
            id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            name TEXT COLLATE "C" NOT NULL CONSTRAINT accounts_name_key UNIQUE,
            password_hash TEXT NOT NULL,
            quota_bytes BIGINT NOT NULL DEFAULT 0,
            quota_messages BIGINT NOT NULL DEFAULT 0,
            used_bytes BIGINT NOT NULL DEFAULT 0,
            used_messages BIGINT NOT NULL DEFAULT 0
        )""",
        'CREATE TABLE domains (name TEXT COLLATE "C" CONSTRAINT domains_pkey PRIMARY KEY)',
        """CREATE TABLE aliases (
            address TEXT COLLATE "C" CONSTRAINT aliases_pkey PRIMARY KEY,
            account_id BIGINT NOT NULL REFERENCES accounts (id) ON DELETE CASCADE
        )""",
        "CREATE INDEX aliases_account ON aliases (account_id)",
        """CREATE TABLE mailboxes (
            id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            account_id BIGINT NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
            name TEXT COLLATE "C" NOT NULL,
            uidvalidity BIGINT NOT NULL,
            uidnext BIGINT NOT NULL DEFAULT 1,
            highestmodseq BIGINT NOT NULL DEFAULT 1,
            special_use TEXT NOT NULL DEFAULT '',
            recent_floor BIGINT NOT NULL DEFAULT 1,
            pruned_modseq BIGINT NOT NULL DEFAULT 0,
            CONSTRAINT mailboxes_account_name_key UNIQUE (account_id, name)
        )""",
        """CREATE TABLE subscriptions (
            account_id BIGINT NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
            name TEXT COLLATE "C" NOT NULL,
            PRIMARY KEY (account_id, name)
        )""",
        """CREATE TABLE messages (
            mailbox_id BIGINT NOT NULL REFERENCES mailboxes (id) ON DELETE CASCADE,
            uid BIGINT NOT NULL,
            modseq BIGINT NOT NULL,
            created_modseq BIGINT NOT NULL,
            flags TEXT COLLATE "C" NOT NULL DEFAULT '',
            internal_date BIGINT NOT NULL,
            tz_offset INTEGER NOT NULL,
            size BIGINT NOT NULL,
            blob_key TEXT NOT NULL,
            envelope BYTEA NOT NULL,
            structure BYTEA NOT NULL,
            header BYTEA NOT NULL,
            sent_date BIGINT,
            save_date BIGINT NOT NULL,  -- unix seconds stored in this mailbox (RFC 8514 SAVEDATE)
            PRIMARY KEY (mailbox_id, uid)
        )""",
        "CREATE INDEX messages_modseq ON messages (mailbox_id, modseq)",
        "CREATE TABLE blobs (key TEXT PRIMARY KEY, refcount BIGINT NOT NULL)",
        # Expunges only: present messages carry their own modseq; `at` (unix seconds) ages them.
        """CREATE TABLE changes (
            mailbox_id BIGINT NOT NULL REFERENCES mailboxes (id) ON DELETE CASCADE,
            modseq BIGINT NOT NULL,
            uid BIGINT NOT NULL,
            kind TEXT NOT NULL,
            at DOUBLE PRECISION NOT NULL
        )""",
        "CREATE INDEX changes_modseq ON changes (mailbox_id, modseq)",
        "CREATE INDEX changes_at ON changes (at)",
        """CREATE TABLE leases (
            name TEXT PRIMARY KEY,
            holder TEXT NOT NULL,
            expires DOUBLE PRECISION NOT NULL
        )""",
        # The outbound queue and API tokens (ADR 0008), as in SQLite's step 2.
        """CREATE TABLE outbound_messages (
            id TEXT PRIMARY KEY,
            sender TEXT NOT NULL,
            blob_key TEXT NOT NULL,
            size BIGINT NOT NULL,
            created DOUBLE PRECISION NOT NULL,
            client TEXT NOT NULL,
            idempotency_key TEXT NOT NULL,
            message_id_header TEXT NOT NULL,
            original_headers BYTEA NOT NULL,
            next_attempt DOUBLE PRECISION NOT NULL,
            lease_holder TEXT NOT NULL DEFAULT '',
            lease_expires DOUBLE PRECISION NOT NULL DEFAULT 0,
            attempts INTEGER NOT NULL DEFAULT 0,
            done BOOLEAN NOT NULL DEFAULT false
        )""",
        "CREATE INDEX outbound_due ON outbound_messages (done, next_attempt)",
        "CREATE UNIQUE INDEX outbound_idempotency ON outbound_messages (client, idempotency_key)"
        " WHERE idempotency_key <> ''",
        """CREATE TABLE outbound_recipients (
            message_id TEXT NOT NULL REFERENCES outbound_messages (id) ON DELETE CASCADE,
            position INTEGER NOT NULL,
            recipient TEXT NOT NULL,
            domain TEXT NOT NULL,
            local BOOLEAN NOT NULL,
            state TEXT NOT NULL,
            attempts INTEGER NOT NULL DEFAULT 0,
            last_error TEXT NOT NULL DEFAULT '',
            remote_mta TEXT NOT NULL DEFAULT '',
            next_attempt DOUBLE PRECISION NOT NULL DEFAULT 0,
            updated DOUBLE PRECISION NOT NULL,
            PRIMARY KEY (message_id, position)
        )""",
        """CREATE TABLE api_tokens (
            name TEXT COLLATE "C" CONSTRAINT api_tokens_pkey PRIMARY KEY,
            token_hash TEXT NOT NULL UNIQUE,
            from_domains TEXT NOT NULL,
            from_addresses TEXT NOT NULL,
            created DOUBLE PRECISION NOT NULL
        )""",
    ),
    (
        # Step 2 (issue 18): forwarding of an account's or alias's mail to outside addresses.
        """CREATE TABLE forwards (
            address TEXT COLLATE "C" PRIMARY KEY,
            targets TEXT NOT NULL,
            keep_copy BOOLEAN NOT NULL
        )""",
    ),
    (
        # Step 3 (issue 16): the POP3 UIDL a message had on the server it was imported from ('' = the default).
        "ALTER TABLE messages ADD COLUMN pop3_uidl TEXT NOT NULL DEFAULT ''",
    ),
    (
        # Step 4 (issue 16): the UIDVALIDITY came from another server (adopt_uids), so a second
        # import pass may keep using it; a mailstack-made one that equals it by chance may not.
        "ALTER TABLE mailboxes ADD COLUMN adopted BOOLEAN NOT NULL DEFAULT FALSE",
    ),
    (
        # Step 5 (ADR 0046): failed logins, for the throttle of every replica.
        """CREATE TABLE auth_failures (
            ip TEXT COLLATE "C" NOT NULL,
            account TEXT COLLATE "C" NOT NULL,
            at DOUBLE PRECISION NOT NULL
        )""",
        "CREATE INDEX auth_failures_ip ON auth_failures (ip, at)",
        "CREATE INDEX auth_failures_account ON auth_failures (account, at)",
        "CREATE INDEX auth_failures_at ON auth_failures (at)",
    ),
)

# Unique constraints whose violation means "that name is taken" (a race the code's own check lost).
NAME_CONSTRAINTS = frozenset(
    {"accounts_name_key", "domains_pkey", "aliases_pkey", "mailboxes_account_name_key", "api_tokens_pkey"}
)


async def apply_migrations(conn: Any) -> int:
    """Apply the missing steps in one transaction on an asyncpg connection; returns the version. Idempotent."""
    async with conn.transaction():
        # Held to the end of the transaction: a second replica waits here, then sees the steps done.
        await conn.execute("SELECT pg_advisory_xact_lock($1)", MIGRATION_LOCK)
        await conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER PRIMARY KEY)")
        version = int(await conn.fetchval("SELECT COALESCE(MAX(version), 0) FROM schema_version"))
        if version > len(MIGRATIONS):
            raise StorageError(f"database schema version {version} is newer than this program ({len(MIGRATIONS)})")
        for number in range(version + 1, len(MIGRATIONS) + 1):
            for statement in MIGRATIONS[number - 1]:
                await conn.execute(statement)
            await conn.execute("INSERT INTO schema_version (version) VALUES ($1)", number)
    return len(MIGRATIONS)
