"""`decider export` names its cursor without the URL's secrets (issue 24 item 11): a webhook URL's
path, query, fragment and user info never appear in `export_cursors`, and cursors earlier versions
named `TO:URL` are renamed in place, so their exporters resume where they stopped. Real exporter
processes, a real HTTP receiver on 127.0.0.1, a real SQLite file."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from decider.export.naming import cursor_name
from decider.store import DecisionStore, connect
from decider.store.journal import CursorStore

from .test_export import N, Receiver, all_seqs, exporter, seqs_of
from .test_store import row


@pytest.fixture
def rcv() -> Iterator[Receiver]:
    r = Receiver()
    try:
        yield r
    finally:
        r.stop()


@pytest.fixture
def exdb(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'export.db'}"
    DecisionStore(connect(url)).insert_many([row(agent=f"a{i}") for i in range(N)])
    return url

SECRETS = ("T0SECRET", "B0SECRET", "p4thSecret", "t0kenValue")


def secret_url(r: Receiver) -> str:
    return f"http://127.0.0.1:{r.port}/services/T0SECRET/B0SECRET/p4thSecret?token=t0kenValue"


def stored_names(db: str) -> list[str]:
    """Straight from the file, as anyone holding it would read them."""
    with sqlite3.connect(db.removeprefix("sqlite:///")) as conn:
        return [r[0] for r in conn.execute("SELECT name FROM export_cursors")]


def run_once(db: str, url: str, *extra: str) -> str:
    proc = exporter(db, url, "--once", *extra)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    return out + err


def test_the_default_cursor_name_holds_no_part_of_the_url_path_or_query(exdb: str, rcv: Receiver) -> None:
    url = secret_url(rcv)
    logs = run_once(exdb, url) + run_once(exdb, url)      # the second run resumes: nothing is sent twice
    assert sum(len(b) for b in seqs_of(rcv.bodies)) == N
    [name] = stored_names(exdb)
    assert name.startswith(f"webhook:http://127.0.0.1:{rcv.port} sha256:")
    for secret in SECRETS:
        assert secret not in name and secret not in logs
    assert CursorStore(connect(exdb)).get(name) == all_seqs(exdb)[-1]


def test_a_cursor_named_by_an_earlier_version_is_renamed_and_resumes(exdb: str, rcv: Receiver) -> None:
    url = secret_url(rcv)
    half = all_seqs(exdb)[N // 2 - 1]
    cursors = CursorStore(connect(exdb))
    cursors.set(f"webhook:{url}", half)                                     # this exporter's, as stored before
    other = "otlp-logs:https://collector.example:4318/t/t0kenValue/v1/logs"  # another exporter's
    cursors.set(other, 7)
    cursors.set("mine", 3)                                                  # an explicit --name: untouched
    run_once(exdb, url)
    # Only what came after the old cursor was sent: the position survived the rename.
    assert [s for b in seqs_of(rcv.bodies) for s in b] == [s for s in all_seqs(exdb) if s > half]
    names = stored_names(exdb)
    assert sorted(names) == sorted(["mine", cursor_name(f"webhook:{url}"), cursor_name(other)])
    assert not [n for n in names for secret in SECRETS if secret in n]
    assert cursors.get(cursor_name(other)) == 7 and cursors.get("mine") == 3


def test_an_explicit_name_holding_a_url_is_stored_without_its_secret(exdb: str, rcv: Receiver) -> None:
    run_once(exdb, rcv.url, "--name", f"prod {secret_url(rcv)}")
    [name] = stored_names(exdb)
    assert name.startswith(f"prod http://127.0.0.1:{rcv.port} sha256:")
    assert not [s for s in SECRETS if s in name]


@pytest.mark.parametrize(("given", "kept"), [
    ("webhook:https://hooks.slack.com/services/T0SECRET/B0SECRET/p4thSecret", "webhook:https://hooks.slack.com "),
    ("webhook:HTTPS://Hooks.Slack.COM/x?token=t0kenValue", "webhook:https://hooks.slack.com "),
    ("otlp-logs:http://user:p4thSecret@collector:4318/v1/logs", "otlp-logs:http://collector:4318 "),
    ("webhook:http://[::1]:8080/p4thSecret", "webhook:http://[::1]:8080 "),
    ("webhook:http://h:99999/p4thSecret", "webhook:http:// "),            # a port urlsplit refuses
    ("webhook:http://h#p4thSecret", "webhook:http://h "),
    ("webhook:http://h p4thSecret", "webhook:http:// "),                  # whitespace in the host
    ("webhook:http://127.0.0.1:9000", "webhook:http://127.0.0.1:9000"),   # nothing secret: unchanged
    ("nightly-siem", "nightly-siem"),
])
def test_hostile_urls_keep_only_their_origin(given: str, kept: str) -> None:
    name = cursor_name(given)
    assert name.startswith(kept) and "p4thSecret" not in name and "t0kenValue" not in name
    assert cursor_name(name) == name                    # stable: a renamed cursor is not renamed again
    if name != given:
        assert cursor_name(given.replace("p4th", "other").replace("t0ken", "other")) != name  # told apart


def test_two_receivers_on_one_host_keep_two_cursors(tmp_path: Path) -> None:
    a = cursor_name("webhook:https://hooks.slack.com/services/T/B/one")
    b = cursor_name("webhook:https://hooks.slack.com/services/T/B/two")
    assert a != b and a.split(" ")[0] == b.split(" ")[0]


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_renaming_onto_a_cursor_in_use_keeps_the_one_in_use(backend: str, tmp_path: Path, request) -> None:  # noqa: ANN001
    """Two exporters of one receiver, one already renamed and further on: the old name is dropped and
    the position in use stays (and a second rename, as by a second exporter starting, is a no-op)."""
    if backend == "postgresql":
        url = request.getfixturevalue("postgres").create_database("cursor_rename")
    else:
        url = f"sqlite:///{tmp_path / 'rename.db'}"
    cursors = CursorStore(connect(url))
    old = "webhook:https://hooks.example/T/B/p4thSecret"
    cursors.set(old, 5)
    cursors.set(cursor_name(old), 9)
    cursors.rename(old, cursor_name(old))
    cursors.rename(old, cursor_name(old))
    assert list(cursors.names()) == [cursor_name(old)] and cursors.get(cursor_name(old)) == 9
