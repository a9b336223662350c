"""Named lists (`spec.lists`, SPEC §10): inline or from a YAML/CSV file in the bundle, `lists.<name>`
in CEL, type-checked at build time, part of the revision and of the `.bundle` archive."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from decider.bundle.archive import build_archive, build_manifest, read_bundle_bytes
from decider.bundle.compile import (
    Bundle,
    bundle_lists,
    compile_bundle,
    list_declarations,
    load_bundle,
    load_bundle_files,
)
from decider.cel.env import environment
from decider.engine.decide import decide
from decider.errors import PolicyLoadError
from decider.policy.loader import load_source
from decider.v1 import decider_pb2 as pb

from .helpers import ROOT, start_server

BUNDLE = """\
apiVersion: decider/v1
kind: Bundle
metadata:
  name: lists
  version: 1.0.0
spec:
  default: allow
  lists:
    shorteners: [bit.ly, t.co, tinyurl.com]
    disposable: lists/disposable.csv
    limits: lists/limits.yaml
"""

POLICY = """\
apiVersion: decider/v1
kind: Policy
metadata:
  name: web
spec:
  match:
    tools: ["http.*", "email.*"]
  rules:
    - id: no-shortened-links
      effect: deny
      when: has(tool.args.url) && url.host(tool.args.url) in lists.shorteners
    - id: no-disposable-mail
      effect: deny
      when: has(tool.args.to) && email.domain(tool.args.to) in lists.disposable
    - id: big-needs-approval
      effect: require_approval
      when: has(tool.args.amount) && tool.args.amount > lists.limits[0]
"""

CSV = "# domain,note\nmailinator.com,classic\n\nguerrillamail.com\n  10minutemail.com , spaces trimmed\n"
LIMITS = "- 100\n- 250.5\n"


def write(folder: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    return folder


def source(tmp: Path, **over: str) -> Path:
    files = {"bundle.yaml": BUNDLE, "web.yaml": POLICY, "lists/disposable.csv": CSV, "lists/limits.yaml": LIMITS}
    files.update({k.replace("__", "/").replace("_csv", ".csv").replace("_yaml", ".yaml"): v for k, v in over.items()})
    return write(tmp, files)


def call(bundle: Bundle, tool: str, **args: object) -> str:
    req = pb.DecideRequest(agent=pb.Agent(id="a"), tool=pb.ToolCall(name=tool))
    req.tool.args.update(args)
    d = decide(bundle, req)
    return f"{pb.Outcome.Name(d.outcome)} {d.deciding_rule}"


def errors_of(folder: Path) -> list[str]:
    with pytest.raises(PolicyLoadError) as exc:
        load_bundle(folder)
    return [str(e) for e in exc.value.errors]


def test_inline_csv_and_yaml_lists_are_read_as_values(tmp_path: Path) -> None:
    bundle = load_bundle(source(tmp_path))
    assert bundle_lists(bundle) == {
        "shorteners": ["bit.ly", "t.co", "tinyurl.com"],
        "disposable": ["mailinator.com", "guerrillamail.com", "10minutemail.com"],
        "limits": [100.0, 250.5],
    }
    assert list_declarations(bundle.lists) == (("disposable", "string"), ("limits", "double"),
                                               ("shorteners", "string"))


def test_conditions_see_lists_by_name(tmp_path: Path) -> None:
    bundle = load_bundle(source(tmp_path))
    assert call(bundle, "http.get", url="https://bit.ly/x") == "DENY no-shortened-links"
    assert call(bundle, "http.get", url="https://example.com/x") == "ALLOW default"
    assert call(bundle, "email.send", to="x@mailinator.com") == "DENY no-disposable-mail"
    assert call(bundle, "email.send", to="x@10minutemail.com") == "DENY no-disposable-mail"
    assert call(bundle, "email.send", to="x@example.com") == "ALLOW default"
    assert call(bundle, "http.post", url="https://example.com", amount=101) == "REQUIRE_APPROVAL big-needs-approval"
    assert call(bundle, "http.post", url="https://example.com", amount=100) == "ALLOW default"


def test_a_tool_whose_policies_name_no_list_binds_none(tmp_path: Path) -> None:
    bundle = load_bundle(source(tmp_path))
    assert set(bundle.list_data("http.get")) == {"lists.shorteners", "lists.disposable", "lists.limits"}
    assert bundle.list_data("fs.read") == {}


def test_an_unknown_list_name_is_a_build_error_with_position(tmp_path: Path) -> None:
    bad = POLICY.replace("in lists.shorteners", "in lists.shortners")
    errors = errors_of(source(tmp_path, web_yaml=bad))
    # At `lists`, where the reference starts.
    assert errors == [f"{tmp_path / 'web.yaml'}:11:62: unknown list 'shortners' "
                      "(bundle.yaml spec.lists has: disposable, limits, shorteners)"]


def test_list_element_types_are_checked(tmp_path: Path) -> None:
    bad = POLICY.replace("tool.args.amount > lists.limits[0]", 'lists.limits[0] == "x"')
    errors = errors_of(source(tmp_path, web_yaml=bad))
    assert errors == [f"{tmp_path / 'web.yaml'}:17:54: found no matching overload for '_==_' applied to "
                      "'(double, string)'"]


def test_the_lists_extension_still_works_beside_named_lists(tmp_path: Path) -> None:
    pol = POLICY.replace("has(tool.args.url) && url.host(tool.args.url) in lists.shorteners",
                         "has(tool.args.url) && url.host(tool.args.url) in lists.shorteners && lists.range(3).size() == 3")
    bundle = load_bundle(source(tmp_path, web_yaml=pol))
    assert call(bundle, "http.get", url="https://t.co/x") == "DENY no-shortened-links"


@pytest.mark.parametrize(
    ("over", "expected"),
    [
        ({"bundle_yaml": BUNDLE.replace("lists/limits.yaml", "lists/nope.yaml")},
         "bundle.yaml:11:13: list 'limits': file 'lists/nope.yaml' is not in the bundle folder"),
        ({"bundle_yaml": BUNDLE.replace("lists/limits.yaml", "../limits.yaml")},
         "bundle.yaml:9:5: spec.lists: list 'limits': '../limits.yaml' must be a relative path inside "
         "the bundle folder ending in .yaml, .yml or .csv"),
        ({"bundle_yaml": BUNDLE.replace("shorteners:", "short-eners:")},
         "bundle.yaml:9:5: spec.lists: list name 'short-eners' must be an identifier"),
        ({"lists__limits_yaml": "- 1\n- {a: 2}\n"},
         "lists/limits.yaml:2:3: a list item must be a string, number or boolean"),
        ({"lists__limits_yaml": "a: 1\n"},
         "lists/limits.yaml:1:1: a list file holds one YAML sequence"),
    ],
)
def test_bad_lists_are_located_errors(tmp_path: Path, over: dict[str, str], expected: str) -> None:
    errors = errors_of(source(tmp_path, **over))
    assert any(expected in e for e in errors), errors
    # The list's own error, not a cascade of "unknown list" errors from the conditions using it.
    assert not any("unknown list" in e for e in errors), errors


def test_list_files_are_part_of_the_revision(tmp_path: Path) -> None:
    first = load_bundle(source(tmp_path)).revision
    (tmp_path / "lists" / "disposable.csv").write_text(CSV + "yopmail.com\n")
    second = load_bundle(tmp_path)
    assert second.revision != first
    assert "yopmail.com" in second.lists["disposable"]


def test_a_bundle_file_carries_its_list_files(tmp_path: Path) -> None:
    folder = source(tmp_path / "src")
    src = load_source(folder)
    bundle = compile_bundle(src)
    assert {"lists/disposable.csv", "lists/limits.yaml"} <= set(src.files)
    data = build_archive(build_manifest(bundle.name, bundle.version, bundle.revision, src.files, None), src.files)
    bf = read_bundle_bytes(data, "x.bundle")
    again = compile_bundle(load_bundle_files(bf.files, "x.bundle"))
    assert again.revision == bundle.revision
    assert bundle_lists(again) == bundle_lists(bundle)
    assert call(again, "email.send", to="x@guerrillamail.com") == "DENY no-disposable-mail"


def test_eval_helpers_bind_a_bundles_lists(tmp_path: Path) -> None:
    # What `decider eval --bundle` needs: the bundle's env and its lists as activation data.
    bundle = load_bundle(source(tmp_path))
    env = environment(list_declarations(bundle.lists))
    data = {f"lists.{k}": v for k, v in bundle_lists(bundle).items()}
    value = env.compile('"t.co" in lists.shorteners && lists.limits.size() == 2').eval(env.Activation(data=data))
    assert value.plain_value() is True


# --- the shells: check, bundle build/verify, serve with hot reload of a list file ------------------


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "decider", *args], capture_output=True, text=True, cwd=ROOT,
                          timeout=60)


def test_check_and_bundle_build_verify_carry_lists(tmp_path: Path) -> None:
    folder = source(tmp_path / "src")
    assert cli("check", str(folder)).returncode == 0
    bad = tmp_path / "bad"
    source(bad, web_yaml=POLICY.replace("lists.disposable", "lists.disposible"))
    run = cli("check", str(bad))
    assert run.returncode != 0 and "unknown list 'disposible'" in run.stdout + run.stderr
    built = cli("bundle", "build", str(folder), "-o", str(tmp_path / "out"))
    assert built.returncode == 0, built.stderr
    path = built.stdout.split()[0]
    verified = cli("bundle", "verify", path)
    assert verified.returncode == 0 and "(4 files, unsigned)" in verified.stdout  # bundle, policy, CSV and YAML lists


def test_a_served_bundle_sees_its_lists_and_reloads_when_a_list_file_changes(tmp_path: Path) -> None:
    folder = source(tmp_path / "src")
    srv = start_server(tmp_path, folder, None, "--poll-interval", "0.2")
    try:
        def mail(to: str) -> tuple[str, str]:
            with srv.client() as c:
                resp = c.decide(agent={"id": "a"}, tool="email.send", args={"to": to})
            return pb.Outcome.Name(resp.outcome), resp.bundle.revision

        outcome, first = mail("x@yopmail.com")
        assert outcome == "ALLOW"
        (folder / "lists" / "disposable.csv").write_text(CSV + "yopmail.com\n")
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and mail("x@yopmail.com")[1] == first:
            time.sleep(0.1)
        assert mail("x@yopmail.com")[0] == "DENY"
    finally:
        srv.stop()


def test_a_bad_csv_list_is_a_located_error(tmp_path: Path) -> None:
    errors = errors_of(source(tmp_path, lists__disposable_csv='a.com\n"unclosed\n'))
    assert any("lists/disposable.csv:" in e and "bad CSV" in e for e in errors), errors
    (tmp_path / "lists" / "disposable.csv").write_bytes(b"a.com\n\xff\n")
    errors = errors_of(tmp_path)
    assert any("lists/disposable.csv:1:1: not UTF-8 text" in e for e in errors), errors
