"""The console's session cookie: encrypted and authenticated, expiring, and the CSRF check."""

from __future__ import annotations

import time

from decider.console.sessions import Session, SessionCodec, load_secret


def test_a_session_round_trips_and_does_not_show_the_token() -> None:
    codec = SessionCodec(load_secret(None), ttl_s=60)
    s = Session(token="secret-token-value", principal="user:ana", roles=("approver",))
    value = codec.encode(s)
    assert "secret-token-value" not in value and "user:ana" not in value
    back = codec.decode(value)
    assert back is not None and (back.token, back.principal, back.roles, back.csrf) == (
        "secret-token-value", "user:ana", ("approver",), s.csrf)


def test_a_tampered_foreign_or_expired_cookie_is_no_session() -> None:
    codec = SessionCodec(load_secret(None), ttl_s=60)
    value = codec.encode(Session(token="t", principal="user:ana"))
    flipped = value[:20] + ("A" if value[20] != "A" else "B") + value[21:]
    assert codec.decode(flipped) is None
    assert SessionCodec(load_secret(None), ttl_s=60).decode(value) is None   # another key
    assert codec.decode("") is None and codec.decode("not base64 !!") is None
    old = Session(token="t", principal="user:ana", expires=time.time() - 1)
    assert codec.decode(codec.encode(old)) is None


def test_csrf_token_must_match_exactly() -> None:
    s = Session()
    assert s.csrf_ok(s.csrf)
    assert not s.csrf_ok(None) and not s.csrf_ok("") and not s.csrf_ok(s.csrf + "x")
    assert Session().csrf != s.csrf
