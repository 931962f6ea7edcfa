"""Mailbox commands with imaplib/imapclient: LIST/LSUB (attributes, special-use, mUTF-7), CREATE
(USE), DELETE, RENAME (INBOX semantics), SUBSCRIBE, STATUS, NAMESPACE, ID, ENABLE, QUOTA."""

from __future__ import annotations

import imaplib
from collections.abc import Iterator

import pytest
from imapclient import IMAPClient

from tests.fixtures.imap_server import PASSWORD, ImapEnv, RawImap, imap_env, message


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ImapEnv]:
    with imap_env(tmp_path_factory.mktemp("imap-mailboxes")) as e:
        yield e


def _client(env: ImapEnv) -> tuple[imaplib.IMAP4, str]:
    user = env.new_account()
    client = imaplib.IMAP4("127.0.0.1", env.port())
    client.login(user, PASSWORD)
    return client, user


def test_list_special_use_children_and_delimiter(env: ImapEnv) -> None:
    client, _ = _client(env)
    assert client.create("Work/Projects")[0] == "OK"
    _, lines = client.list()
    listed = {line.decode() for line in lines}  # type: ignore[union-attr]
    assert '(\\HasNoChildren \\Sent) "/" Sent' in listed
    assert '(\\HasChildren) "/" Work' in listed
    assert '(\\HasNoChildren) "/" Work/Projects' in listed
    _, lines = client.list('""', "%")
    assert not any(b"Work/Projects" in line for line in lines)  # type: ignore[operator]
    _, lines = client.list('""', '""')
    assert lines == [b'(\\Noselect) "/" ""']
    client.logout()


def test_create_delete_rename_and_inbox_rename(env: ImapEnv) -> None:
    client, user = _client(env)
    assert client.create("A")[0] == "OK"
    typ, data = client.create("A")
    assert typ == "NO" and b"[ALREADYEXISTS]" in data[0]
    assert client.rename("A", "B")[0] == "OK"
    assert client.select("A")[0] == "NO"
    typ, data = client.delete("Nope")
    assert typ == "NO" and b"[NONEXISTENT]" in data[0]
    assert client.delete("B")[0] == "OK"
    assert client.delete("INBOX")[0] == "NO"
    # RFC 3501 §6.3.5: renaming INBOX moves its messages and leaves INBOX empty
    env.deliver(user, message("inbox rename"))
    assert client.rename("INBOX", "Old")[0] == "OK"
    assert client.select("INBOX")[1] == [b"0"]
    assert client.select("Old")[1] == [b"1"]
    client.logout()


def test_subscribe_lsub_and_modified_utf7_names(env: ImapEnv) -> None:
    client, _ = _client(env)
    name = "&AMk-t&AOk-"  # "Été" in modified UTF-7 (RFC 3501 §5.1.3)
    assert client.create(name)[0] == "OK"
    assert client.subscribe(name)[0] == "OK"
    _, lines = client.lsub('""', "*")
    assert any(line.endswith(name.encode()) for line in lines)
    assert client.unsubscribe(name)[0] == "OK"
    _, lines = client.lsub('""', "*")
    assert not any(line and line.endswith(name.encode()) for line in lines)
    _, lines = client.list('""', "*")
    assert any(line.endswith(name.encode()) for line in lines)  # type: ignore[union-attr]
    client.logout()


def test_status_items(env: ImapEnv) -> None:
    client, user = _client(env)
    env.deliver(user, message("s1"))
    env.append(user, "INBOX", message("s2"), ("\\Seen", "\\Deleted"))
    typ, data = client.status("INBOX", "(MESSAGES RECENT UIDNEXT UIDVALIDITY UNSEEN HIGHESTMODSEQ SIZE DELETED)")
    assert typ == "OK"
    text = data[0].decode()
    assert "MESSAGES 2" in text and "UNSEEN 1" in text and "UIDNEXT 3" in text and "DELETED 1" in text
    assert "RECENT 2" in text and "HIGHESTMODSEQ" in text and "SIZE " in text
    typ, data = client.status("Nope", "(MESSAGES)")
    assert typ == "NO"
    client.logout()


def test_imapclient_namespace_id_enable_special_use(env: ImapEnv) -> None:
    user = env.new_account()
    with IMAPClient("127.0.0.1", port=env.port(), ssl=False) as client:
        client.login(user, PASSWORD)
        ns = client.namespace()
        assert ns.personal == (("", "/"),) and ns.other is None and ns.shared is None
        server_id = client.id_({"name": "pytest"})
        assert "b'name', b'mailstack'" in str(server_id)
        assert client.enable("CONDSTORE") == [b"CONDSTORE"]
        assert client.find_special_folder(b"\\Trash") == "Trash"
        client.create_folder("Receipts")
        folders = {f[2] for f in client.list_folders()}
        assert {"INBOX", "Receipts", "Sent", "Archive"} <= folders


def test_create_special_use_and_quota(env: ImapEnv) -> None:
    user = env.new_account(quota_bytes=10 * 1024, quota_messages=5)
    raw = RawImap(env.port())
    raw.login(user)
    assert raw.command("c1", "CREATE Invoices (USE (\\Archive))")[-1].startswith(b"c1 OK")
    lines = raw.command("c2", 'LIST (SPECIAL-USE) "" *')
    assert any(b"Invoices" in line and b"\\Archive" in line for line in lines)
    reply = raw.command("c3", "CREATE Bad (USE (\\Nonsense))")[-1]
    assert reply.startswith(b"c3 NO [USEATTR]")  # RFC 6154 §3
    lines = raw.command("q1", "GETQUOTAROOT INBOX")
    assert lines[0] == b'* QUOTAROOT INBOX ""'
    assert lines[1] == b'* QUOTA "" (STORAGE 0 10 MESSAGE 0 5)'
    lines = raw.command("q2", 'GETQUOTA ""')
    assert lines[0].startswith(b'* QUOTA "" (STORAGE')
    assert raw.command("q3", 'SETQUOTA "" (STORAGE 1)')[-1].startswith(b"q3 NO")
    # over quota: APPEND answers NO [OVERQUOTA] (RFC 9208 §5.3)
    big = message("big", "x" * 12 * 1024)
    raw.send(b"a1 APPEND INBOX {%d+}\r\n" % len(big) + big + b"\r\n")
    assert raw.until("a1")[-1].startswith(b"a1 NO [OVERQUOTA]")
    raw.close()


# ---- LIST-EXTENDED (RFC 5258) and LIST-STATUS (RFC 5819), as raw transcripts


def _food_account(env: ImapEnv) -> tuple[RawImap, str]:
    """RFC 5258 §5-style data: Fruit/{Apple,Banana}, Vegetable/{Broccoli,Corn}, Tofu, Nuts/Almond
    with Nuts deleted (\\NonExistent); subscribed: Fruit/Banana, Fruit/Peach (deleted), Vegetable,
    Vegetable/Broccoli."""
    user = env.new_account()
    raw = RawImap(env.port())
    raw.login(user)
    for name in ("Fruit/Apple", "Fruit/Banana", "Fruit/Peach", "Vegetable/Broccoli", "Vegetable/Corn", "Tofu"):
        assert raw.command("c", f"CREATE {name}")[-1].startswith(b"c OK"), name
    for name in ("Fruit/Banana", "Fruit/Peach", "Vegetable", "Vegetable/Broccoli"):
        assert raw.command("s", f"SUBSCRIBE {name}")[-1].startswith(b"s OK"), name
    assert raw.command("d", "DELETE Fruit/Peach")[-1].startswith(b"d OK")
    # Nuts stays as a name only (a RENAME onto Nuts/Almond would create Nuts: RFC 3501 §6.3.5)
    assert raw.command("c", "CREATE Nuts/Almond")[-1].startswith(b"c OK")
    assert raw.command("r", "DELETE Nuts")[-1].startswith(b"r OK")
    return raw, user


def test_list_extended_is_advertised_and_recursivematch_alone_is_refused(env: ImapEnv) -> None:
    raw, _ = _food_account(env)
    caps = raw.command("c1", "CAPABILITY")[0].split()
    assert b"LIST-EXTENDED" in caps and b"LIST-STATUS" in caps
    assert raw.command("l1", 'LIST (RECURSIVEMATCH) "" *')[-1].startswith(b"l1 BAD")
    raw.close()


def test_list_subscribed_selection_with_nonexistent(env: ImapEnv) -> None:
    # RFC 5258 §5 example 2 (and several patterns, RFC 5258 §3)
    raw, _ = _food_account(env)
    assert raw.command("A02", 'LIST (SUBSCRIBED) "" ("Fruit*" "Vegetable*")') == [
        b'* LIST (\\HasNoChildren \\Subscribed) "/" Fruit/Banana',
        b'* LIST (\\NonExistent \\Subscribed) "/" Fruit/Peach',
        b'* LIST (\\HasChildren \\Subscribed) "/" Vegetable',
        b'* LIST (\\HasNoChildren \\Subscribed) "/" Vegetable/Broccoli',
        b"A02 OK completed",
    ]
    raw.close()


def test_list_return_children_and_subscribed(env: ImapEnv) -> None:
    # RFC 5258 §5 example 3 style: "%" level, a never-created parent is \NonExistent
    raw, _ = _food_account(env)
    assert raw.command("A03", 'LIST "" ("Fruit" "Nuts" "Tofu" "Vegetable") RETURN (CHILDREN SUBSCRIBED)') == [
        b'* LIST (\\HasChildren) "/" Fruit',
        b'* LIST (\\NonExistent \\HasChildren) "/" Nuts',
        b'* LIST (\\HasNoChildren) "/" Tofu',
        b'* LIST (\\HasChildren \\Subscribed) "/" Vegetable',
        b"A03 OK completed",
    ]
    # a plain RFC 3501 LIST: the parent that is not a mailbox is \Noselect, "%" shows it, "*" does not
    assert raw.command("A04", 'LIST "" N%') == [b'* LIST (\\Noselect \\HasChildren) "/" Nuts', b"A04 OK completed"]
    assert raw.command("A05", 'LIST "" N*') == [b'* LIST (\\HasNoChildren) "/" Nuts/Almond', b"A05 OK completed"]
    raw.close()


def test_list_subscribed_recursivematch_childinfo(env: ImapEnv) -> None:
    # RFC 5258 §5 example 5 / §3.5: a parent whose descendant is subscribed but outside the pattern
    raw, _ = _food_account(env)
    assert raw.command("A04", 'LIST (SUBSCRIBED RECURSIVEMATCH) "" ("Fruit" "Tofu" "Vegetable") RETURN (CHILDREN)') == [
        b'* LIST (\\HasChildren) "/" Fruit ("CHILDINFO" ("SUBSCRIBED"))',
        b'* LIST (\\HasChildren \\Subscribed) "/" Vegetable ("CHILDINFO" ("SUBSCRIBED"))',
        b"A04 OK completed",
    ]
    # with "*" the subscribed descendants are themselves listed; Fruit itself is not
    lines = raw.command("A05", 'LIST (SUBSCRIBED RECURSIVEMATCH) "" "Fruit*"')
    assert lines == [
        b'* LIST (\\HasNoChildren \\Subscribed) "/" Fruit/Banana',
        b'* LIST (\\NonExistent \\Subscribed) "/" Fruit/Peach',
        b"A05 OK completed",
    ]
    raw.close()


def test_list_special_use_selection_and_recursivematch(env: ImapEnv) -> None:
    raw, _ = _food_account(env)
    assert raw.command("c", "CREATE Projects/Starred (USE (\\Flagged))")[-1].startswith(b"c OK")
    assert raw.command("L1", 'LIST (SPECIAL-USE) "" ("Projects*" "Fruit*")') == [
        b'* LIST (\\HasNoChildren \\Flagged) "/" Projects/Starred',
        b"L1 OK completed",
    ]
    assert raw.command("L2", 'LIST (SPECIAL-USE RECURSIVEMATCH) "" ("Projects" "Fruit")') == [
        b'* LIST (\\HasChildren) "/" Projects ("CHILDINFO" ("SPECIAL-USE"))',
        b"L2 OK completed",
    ]
    raw.close()


def test_list_status(env: ImapEnv) -> None:
    # RFC 5819 §2: a STATUS after the LIST of each selectable mailbox, none for \NonExistent ones
    raw, user = _food_account(env)
    env.deliver(user, message("ls1"))
    env.deliver(user, message("ls2"))
    env.append(user, "Fruit/Banana", message("ls3"), ("\\Seen",))
    lines = raw.command("A01", 'LIST "" ("INBOX" "Fruit/%" "Nuts") RETURN (STATUS (MESSAGES UNSEEN))')
    assert lines == [
        b'* LIST (\\HasNoChildren) "/" INBOX',
        b"* STATUS INBOX (MESSAGES 2 UNSEEN 2)",
        b'* LIST (\\HasNoChildren) "/" Fruit/Apple',
        b"* STATUS Fruit/Apple (MESSAGES 0 UNSEEN 0)",
        b'* LIST (\\HasNoChildren) "/" Fruit/Banana',
        b"* STATUS Fruit/Banana (MESSAGES 1 UNSEEN 0)",
        b'* LIST (\\NonExistent \\HasChildren) "/" Nuts',
        b"A01 OK completed",
    ]
    lines = raw.command("A02", 'LIST (SUBSCRIBED) "" "Fruit/*" RETURN (STATUS (MESSAGES UIDNEXT))')
    assert lines == [
        b'* LIST (\\HasNoChildren \\Subscribed) "/" Fruit/Banana',
        b"* STATUS Fruit/Banana (MESSAGES 1 UIDNEXT 2)",
        b'* LIST (\\NonExistent \\Subscribed) "/" Fruit/Peach',
        b"A02 OK completed",
    ]
    raw.close()


def test_multiappend_over_quota_part_way_keeps_nothing(env: ImapEnv) -> None:
    # RFC 3502 §6.3.11: the third message is over the message quota; the two stored before it are
    # withdrawn, and a session that has the mailbox selected ends up with nothing new
    user = env.new_account(quota_messages=3)
    env.append(user, "INBOX", message("already here"))
    watcher = RawImap(env.port())
    watcher.login(user)
    watcher.command("s", "SELECT INBOX")
    raw = RawImap(env.port())
    raw.login(user)
    parts = [message(f"m{i}") for i in range(3)]
    data = b"a1 APPEND INBOX"
    for part in parts:
        data += b" {%d+}\r\n" % len(part) + part
    raw.send(data + b"\r\n")
    assert raw.until("a1")[-1].startswith(b"a1 NO [OVERQUOTA]")
    assert raw.command("st", "STATUS INBOX (MESSAGES)")[0] == b"* STATUS INBOX (MESSAGES 1)"
    watcher.command("n", "NOOP")  # whatever it saw come and go is announced by now
    assert watcher.command("u", "FETCH 1:* UID")[:-1] == [b"* 1 FETCH (UID 1)"]
    # within the quota the same APPEND stores all of them
    raw.send(b"a2 APPEND INBOX" + b"".join(b" {%d+}\r\n" % len(p) + p for p in parts[:2]) + b"\r\n")
    assert raw.until("a2")[-1].startswith(b"a2 OK [APPENDUID ")
    raw.close()
    watcher.close()
