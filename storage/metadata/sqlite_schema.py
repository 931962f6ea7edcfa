"""Versioned SQLite schema for the metadata store; PRAGMA user_version is the applied step count.

Add a step by appending to MIGRATIONS; never edit a step that has shipped.
"""

import sqlite3

from mailstack.storage.errors import StorageError

# Each step is a tuple of statements run in one transaction with the version bump
# (executescript would commit on its own, so statements run one by one).
MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        # Global counters; "uidvalidity" never goes back, so a recreated name gets a new one.
        """CREATE TABLE counters (
            name TEXT PRIMARY KEY,
            value INTEGER NOT NULL
        )""",
        "INSERT INTO counters (name, value) VALUES ('uidvalidity', 0)",
        # AUTOINCREMENT: ids of deleted accounts/mailboxes are never handed out again,
        # so a stale id held by a session can never reach someone else's rows.
        """CREATE TABLE accounts (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            name TEXT NOT NULL UNIQUE,
            password_hash TEXT NOT NULL,
            quota_bytes INTEGER NOT NULL DEFAULT 0,
            quota_messages INTEGER NOT NULL DEFAULT 0,
            used_bytes INTEGER NOT NULL DEFAULT 0,
            used_messages INTEGER NOT NULL DEFAULT 0
        )""",
        "CREATE TABLE domains (name TEXT PRIMARY KEY)",
        """CREATE TABLE aliases (
            address TEXT PRIMARY KEY,
            account_id INTEGER NOT NULL REFERENCES accounts (id) ON DELETE CASCADE
        )""",
        "CREATE INDEX aliases_account ON aliases (account_id)",
        """CREATE TABLE mailboxes (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            account_id INTEGER NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
            name TEXT NOT NULL,
            uidvalidity INTEGER NOT NULL,
            uidnext INTEGER NOT NULL DEFAULT 1,
            highestmodseq INTEGER NOT NULL DEFAULT 1,
            special_use TEXT NOT NULL DEFAULT '',
            recent_floor INTEGER NOT NULL DEFAULT 1,
            UNIQUE (account_id, name)
        )""",
        """CREATE TABLE subscriptions (
            account_id INTEGER NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
            name TEXT NOT NULL,
            PRIMARY KEY (account_id, name)
        )""",
        # created_modseq tells "new" from "flags" in changes_since (RFC 7162 §3.2.5.2 / QRESYNC).
        """CREATE TABLE messages (
            mailbox_id INTEGER NOT NULL REFERENCES mailboxes (id) ON DELETE CASCADE,
            uid INTEGER NOT NULL,
            modseq INTEGER NOT NULL,
            created_modseq INTEGER NOT NULL,
            flags TEXT NOT NULL DEFAULT '',
            internal_date INTEGER NOT NULL,
            tz_offset INTEGER NOT NULL,
            size INTEGER NOT NULL,
            blob_key TEXT NOT NULL,
            envelope BLOB NOT NULL,
            structure BLOB NOT NULL,
            header BLOB NOT NULL,
            sent_date INTEGER,
            PRIMARY KEY (mailbox_id, uid)
        )""",
        "CREATE INDEX messages_modseq ON messages (mailbox_id, modseq)",
        """CREATE TABLE blobs (
            key TEXT PRIMARY KEY,
            refcount INTEGER NOT NULL
        )""",
        # Expunges only: present messages carry their own modseq.
        """CREATE TABLE changes (
            mailbox_id INTEGER NOT NULL REFERENCES mailboxes (id) ON DELETE CASCADE,
            modseq INTEGER NOT NULL,
            uid INTEGER NOT NULL,
            kind TEXT NOT NULL
        )""",
        "CREATE INDEX changes_modseq ON changes (mailbox_id, modseq)",
        """CREATE TABLE leases (
            name TEXT PRIMARY KEY,
            holder TEXT NOT NULL,
            expires REAL NOT NULL
        )""",
    ),
    (
        # Step 2: the outbound queue and API tokens (storage/queue/sqlite.py, ADR 0007).
        # A queued message holds one reference in `blobs`, so the orphan sweeper keeps its body.
        """CREATE TABLE outbound_messages (
            id TEXT PRIMARY KEY,
            sender TEXT NOT NULL,
            blob_key TEXT NOT NULL,
            size INTEGER NOT NULL,
            created REAL NOT NULL,
            client TEXT NOT NULL,
            idempotency_key TEXT NOT NULL,
            message_id_header TEXT NOT NULL,
            original_headers BLOB NOT NULL,
            next_attempt REAL NOT NULL,
            lease_holder TEXT NOT NULL DEFAULT '',
            lease_expires REAL NOT NULL DEFAULT 0,
            attempts INTEGER NOT NULL DEFAULT 0,
            done INTEGER NOT NULL DEFAULT 0
        )""",
        "CREATE INDEX outbound_due ON outbound_messages (done, next_attempt)",
        "CREATE UNIQUE INDEX outbound_idempotency ON outbound_messages (client, idempotency_key)"
        " WHERE idempotency_key != ''",
        """CREATE TABLE outbound_recipients (
            message_id TEXT NOT NULL REFERENCES outbound_messages (id) ON DELETE CASCADE,
            position INTEGER NOT NULL,
            recipient TEXT NOT NULL,
            domain TEXT NOT NULL,
            local INTEGER NOT NULL,
            state TEXT NOT NULL,
            attempts INTEGER NOT NULL DEFAULT 0,
            last_error TEXT NOT NULL DEFAULT '',
            remote_mta TEXT NOT NULL DEFAULT '',
            next_attempt REAL NOT NULL DEFAULT 0,
            updated REAL NOT NULL,
            PRIMARY KEY (message_id, position)
        )""",
        """CREATE TABLE api_tokens (
            name TEXT PRIMARY KEY,
            token_hash TEXT NOT NULL UNIQUE,
            from_domains TEXT NOT NULL,
            from_addresses TEXT NOT NULL,
            created REAL NOT NULL
        )""",
    ),
    (
        # Step 3: the change log is pruned (MetadataStore.prune_changes). `at` dates each expunge
        # (rows from before start aging now); a mailbox's pruned_modseq says up to where its log
        # is no longer whole.
        "ALTER TABLE changes ADD COLUMN at REAL NOT NULL DEFAULT 0",
        "UPDATE changes SET at = CAST(strftime('%s', 'now') AS REAL)",
        "CREATE INDEX changes_at ON changes (at)",
        "ALTER TABLE mailboxes ADD COLUMN pruned_modseq INTEGER NOT NULL DEFAULT 0",
    ),
    (
        # Step 4: RFC 8514 SAVEDATE, when a row was stored in its mailbox (delivery, APPEND, COPY,
        # MOVE). Rows from before have no record of it: their internal date stands in (ADR 0024).
        "ALTER TABLE messages ADD COLUMN save_date INTEGER",
        "UPDATE messages SET save_date = internal_date",
    ),
    (
        # Step 5 (issue 18): forwarding of an account's or alias's mail to outside addresses.
        """CREATE TABLE forwards (
            address TEXT PRIMARY KEY,
            targets TEXT NOT NULL,
            keep_copy INTEGER NOT NULL
        )""",
    ),
    (
        # Step 6 (issue 16): the POP3 UIDL a message had on the server it was imported from ('' = the default).
        "ALTER TABLE messages ADD COLUMN pop3_uidl TEXT NOT NULL DEFAULT ''",
    ),
    (
        # Step 7 (issue 16): the UIDVALIDITY came from another server (adopt_uids), so a second
        # import pass may keep using it; a mailstack-made one that equals it by chance may not.
        "ALTER TABLE mailboxes ADD COLUMN adopted INTEGER NOT NULL DEFAULT 0",
    ),
    (
        # Step 8 (ADR 0045): a small body kept with its reference count, written in the transaction
        # of the message that brings it (NULL = in the blob store).
        "ALTER TABLE blobs ADD COLUMN body BLOB",
    ),
    (
        # Step 9 (ADR 0046): failed logins, for the throttle of every process on this file.
        "CREATE TABLE auth_failures (ip TEXT NOT NULL, account TEXT NOT NULL, at REAL NOT NULL)",
        "CREATE INDEX auth_failures_ip ON auth_failures (ip, at)",
        "CREATE INDEX auth_failures_account ON auth_failures (account, at)",
        "CREATE INDEX auth_failures_at ON auth_failures (at)",
    ),
)


def apply_migrations(conn: sqlite3.Connection) -> int:
    """Apply the missing steps in one transaction; returns the resulting version. Idempotent."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        version = int(conn.execute("PRAGMA user_version").fetchone()[0])
        if version > len(MIGRATIONS):
            raise StorageError(f"database schema version {version} is newer than this program ({len(MIGRATIONS)})")
        for number in range(version + 1, len(MIGRATIONS) + 1):
            for statement in MIGRATIONS[number - 1]:
                conn.execute(statement)
            # user_version lives in the database header and is part of this transaction.
            conn.execute(f"PRAGMA user_version = {number}")
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    return len(MIGRATIONS)
