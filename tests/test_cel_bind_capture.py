"""`cel.bind` and regex capture (`re.extract`, `re.named`) in policy conditions (SPEC §10 round two,
issue 26 item 3): a pattern written once, what it captured used by name."""

from __future__ import annotations

from pathlib import Path

import pytest

from decider.bundle.compile import Bundle, load_bundle
from decider.cel.regex import extract, named
from decider.engine.decide import decide
from decider.errors import PolicyLoadError
from decider.v1 import decider_pb2 as pb

BUNDLE = """\
apiVersion: decider/v1
kind: Bundle
metadata: {name: capture, version: 1.0.0}
spec:
  default: allow
  lists:
    partner_hosts: [api.partner.example]
"""

POLICY = """\
apiVersion: decider/v1
kind: Policy
metadata: {name: accounts}
spec:
  match: {tools: ["http.*"]}
  rules:
    - id: other-accounts-at-other-hosts
      effect: deny
      when: >-
        cel.bind(m, re.extract(tool.args.url, "^https://([^/]+)/v[0-9]+/accounts/([0-9]+)"),
          m.size() == 2 && !(m[0] in lists.partner_hosts) && m[1] != context.account_id)
      reason: "Another account's data, at a host that is not a partner"
    - id: order-ids-in-range
      effect: require_approval
      when: >-
        cel.bind(o, re.named(tool.args.url, "/orders/(?P<id>[0-9]+)"), has(o.id) && int(o.id) > 1000)
"""


def load(tmp: Path, policy: str = POLICY) -> Bundle:
    (tmp / "bundle.yaml").write_text(BUNDLE)
    (tmp / "accounts.yaml").write_text(policy)
    return load_bundle(tmp)


def ask(bundle: Bundle, url: str, account: str = "7") -> tuple[str, str]:
    req = pb.DecideRequest(agent=pb.Agent(id="bot"), tool=pb.ToolCall(name="http.get"))
    req.tool.args.update({"url": url})
    req.context.update({"account_id": account})
    d = decide(bundle, req)
    return pb.Outcome.Name(d.outcome), d.deciding_rule


def test_a_bound_capture_decides(tmp_path: Path) -> None:
    bundle = load(tmp_path)
    assert ask(bundle, "https://evil.example/v1/accounts/8") == ("DENY", "other-accounts-at-other-hosts")
    assert ask(bundle, "https://evil.example/v1/accounts/7") == ("ALLOW", "default")          # its own account
    assert ask(bundle, "https://api.partner.example/v2/accounts/8") == ("ALLOW", "default")   # a partner host
    assert ask(bundle, "https://evil.example/about") == ("ALLOW", "default")                 # no match: []
    assert ask(bundle, "https://shop.example/orders/1001") == ("REQUIRE_APPROVAL", "order-ids-in-range")
    assert ask(bundle, "https://shop.example/orders/99") == ("ALLOW", "default")


def test_an_invalid_pattern_is_an_evaluation_error_that_fails_closed(tmp_path: Path) -> None:
    bundle = load(tmp_path, POLICY.replace("(?P<id>[0-9]+)", "(?P<id>[0-9]+"))
    req = pb.DecideRequest(agent=pb.Agent(id="bot"), tool=pb.ToolCall(name="http.get"))
    req.tool.args.update({"url": "https://shop.example/orders/1"})
    req.context.update({"account_id": "7"})
    d = decide(bundle, req)
    assert (pb.Outcome.Name(d.outcome), d.deciding_rule) == ("DENY", "order-ids-in-range")
    assert "invalid regular expression '/orders/(?P<id>[0-9]+': missing )" in d.errors[0]


def test_a_capture_of_a_non_string_literal_is_a_build_error(tmp_path: Path) -> None:
    with pytest.raises(PolicyLoadError) as exc:
        load(tmp_path, POLICY.replace("re.extract(tool.args.url,", "re.extract(42,"))
    assert "no matching overload for 're.extract'" in str(exc.value.errors[0])


def test_capture_semantics() -> None:
    assert extract("a1b22", "([a-z])([0-9]+)") == ["a", "1"]      # the first match only
    assert extract("a1b22", "[0-9]+") == ["1"]                     # no group: the whole match
    assert extract("xyz", "([0-9]+)") == []
    assert extract("ab", "(a)(x)?") == ["a", ""]                   # a group that took no part
    assert named("key=v1", "(?P<k>\\w+)=(?P<v>\\w+)") == {"k": "key", "v": "v1"}
    assert named("", "(?P<k>x)") == {}
    assert extract("é-1", "^(.)-") == ["é"]                        # text, not bytes
