"""Tool argument schemas in the catalogue (SPEC §9): a condition reading an argument no matched tool
declares is a build error at its line:col; arguments violating the schema are DENY
`invalid_arguments` naming the JSON path; a real MCP server's `tools/list` makes a catalogue."""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from decider.bundle.compile import Bundle, load_bundle
from decider.bundle.schemas import argument_reads
from decider.client import build_request
from decider.engine.decide import decide
from decider.errors import PolicyLoadError
from decider.v1 import decider_pb2 as pb

from .helpers import ROOT

BUNDLE = """\
apiVersion: decider/v1
kind: Bundle
metadata: {name: schemas}
spec:
  default: allow
  tools:
    "payments.refund":
      risk_tier: 4
      args:
        type: object
        properties: {amount: {type: number}, order: {type: string}}
        required: [amount, order]
    "payments.charge":
      args: {type: object, properties: {amount: {type: number}, card: {type: string}}}
    "fs.read": {risk_tier: 0}
"""

TYPO = """\
apiVersion: decider/v1
kind: Policy
metadata: {name: payments}
spec:
  match:
    tools: ["payments.*"]
  rules:
    - id: big-refunds
      effect: require_approval
      when: tool.args.amout > 1000.0
    - id: block-form
      effect: deny
      when: |
        has(tool.args.order) &&
          tool.args["ordr"] == "x" && "tool.args.nope" != ""
"""


def make(tmp: Path, policy: str) -> Bundle:
    (tmp / "bundle.yaml").write_text(BUNDLE)
    (tmp / "payments.yaml").write_text(policy)
    return load_bundle(tmp)


def test_reading_an_undeclared_argument_is_a_build_error_at_its_line_and_column(tmp_path: Path) -> None:
    with pytest.raises(PolicyLoadError) as err:
        make(tmp_path, TYPO)
    found = sorted((e.line, e.column, e.message) for e in err.value.errors)
    assert [(line, col) for line, col, _ in found] == [(10, 23), (15, 22)]
    assert found[0][2].startswith("tool.args.amout: no tool this policy matches declares argument 'amout'")
    assert "did you mean 'amount'?" in found[0][2]
    assert "declared: amount, card, order" in found[1][2]


def test_decider_check_reports_it_as_file_line_col(tmp_path: Path) -> None:
    make_dir = tmp_path / "b"
    make_dir.mkdir()
    (make_dir / "bundle.yaml").write_text(BUNDLE)
    (make_dir / "payments.yaml").write_text(TYPO)
    out = subprocess.run([sys.executable, "-m", "decider", "check", str(make_dir)], capture_output=True, text=True,
                         cwd=ROOT, timeout=120)
    assert out.returncode == 1
    assert f"{make_dir}/payments.yaml:10:23: tool.args.amout: no tool this policy matches" in out.stdout


def test_declared_arguments_and_policies_over_unschemaed_tools_load(tmp_path: Path) -> None:
    ok = TYPO.replace("amout", "amount").replace('"ordr"', '"order"')
    assert len(make(tmp_path, ok).policies) == 1
    # fs.read has no schema, and a policy without match.tools covers tools without schemas: not checked.
    anything = TYPO.replace('tools: ["payments.*"]', 'tools: ["payments.*", "fs.read"]')
    assert len(make(tmp_path, anything).policies) == 1
    no_match = TYPO.replace('  match:\n    tools: ["payments.*"]\n', "")
    assert len(make(tmp_path, no_match).policies) == 1


def test_argument_reads_skip_strings_and_comments() -> None:
    reads = argument_reads('tool.args.a == "tool.args.b" // tool.args.c\n&& tool.args[\'d\'] > 1 && xtool.args.e')
    assert [(r.name, r.line, r.column) for r in reads] == [("a", 1, 11), ("d", 2, 15)]


def ask(b: Bundle, tool: str, args: dict[str, Any]) -> Any:
    return decide(b, build_request(agent={"id": "refund-bot"}, tool=tool, args=args))


@pytest.mark.parametrize("args, path", [
    ({"amount": "lots", "order": "o-1"}, "$.amount: 'lots' is not of type 'number'"),
    ({"amount": 5}, "$: 'order' is a required property"),
    ({"amount": 5, "order": ["o-1"]}, "$.order: ['o-1'] is not of type 'string'"),
])
def test_arguments_violating_the_schema_are_denied_invalid_arguments_at_the_path(
        tmp_path: Path, args: dict[str, Any], path: str) -> None:
    d = ask(make(tmp_path, TYPO.replace("amout", "amount").replace('"ordr"', '"order"')), "payments.refund", args)
    assert (d.outcome, d.deciding_rule, d.matched_rules) == (pb.DENY, "invalid_arguments", ())
    assert d.reasons[0].text == f"arguments of 'payments.refund' do not match its schema: {path}"


def test_valid_arguments_and_tools_without_schemas_behave_as_before(tmp_path: Path) -> None:
    b = make(tmp_path, TYPO.replace("amout", "amount").replace('"ordr"', '"order"'))
    assert ask(b, "payments.refund", {"amount": 2500, "order": "o-1"}).deciding_rule == "big-refunds"
    assert ask(b, "payments.refund", {"amount": 25, "order": "o-1"}).outcome == pb.ALLOW
    assert ask(b, "fs.read", {"anything": ["goes"]}).outcome == pb.ALLOW
    assert ask(b, "misc.tool", {"amount": "lots"}).outcome == pb.ALLOW   # not in the catalogue


def test_a_schema_that_is_not_json_schema_is_a_load_error(tmp_path: Path) -> None:
    (tmp_path / "bundle.yaml").write_text(BUNDLE.replace("type: object\n        properties",
                                                         "type: objekt\n        properties"))
    with pytest.raises(PolicyLoadError) as err:
        load_bundle(tmp_path)
    (e,) = err.value.errors
    assert (e.line, e.column) == (10, 9) and "tool 'payments.refund': args is not a valid JSON Schema" in e.message


# ---- a real MCP server's tools/list as the catalogue ------------------------------------------------
# Through the product's own CLI: `decider tools import --command …` against mcp-server-git (PyPI,
# installed into the venv by the dev extras), its stdout parsed as catalogue entries.

GIT_POLICY = """\
apiVersion: decider/v1
kind: Policy
metadata: {name: git}
spec:
  match:
    tools: ["git_*"]
  rules:
    - id: git-in-workspace
      effect: allow
      when: path.within(tool.args.repo_path, "/workspace")
    - id: no-force-checkout-of-main
      effect: deny
      when: tool.name == "git_checkout" && tool.args.branch_name == "main"
"""


@pytest.fixture(scope="module")
def git_catalogue(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """`spec.tools` entries as `decider tools import` prints them for a real mcp-server-git."""
    repo = tmp_path_factory.mktemp("repo")
    subprocess.run(["git", "init", "-q", str(repo)], check=True, timeout=30)
    server = f"{shlex.quote(sys.executable)} -m mcp_server_git --repository {shlex.quote(str(repo))}"
    out = subprocess.run([sys.executable, "-m", "decider", "tools", "import", "--command", server],
                         capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("# ") and "tool(s) from mcp-git" in out.stdout.splitlines()[0]
    doc = yaml.safe_load(out.stdout)
    assert list(doc) == ["tools"]   # exactly what goes under spec.tools in bundle.yaml
    return doc["tools"]


def _git_bundle(where: Path, catalogue: dict[str, Any], policy: str) -> Path:
    where.mkdir()
    doc = {"apiVersion": "decider/v1", "kind": "Bundle", "metadata": {"name": "git"},
           "spec": {"default": "deny", "tools": catalogue}}
    (where / "bundle.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    (where / "git.yaml").write_text(policy)
    return where


def test_mcp_server_git_import_loads_as_catalogue_and_type_checks_policies(
        tmp_path: Path, git_catalogue: dict[str, Any]) -> None:
    names = set(git_catalogue)
    assert {"git_status", "git_add", "git_checkout", "git_commit", "git_reset"} <= names
    b = load_bundle(_git_bundle(tmp_path / "ok", git_catalogue, GIT_POLICY))
    # Every imported entry is a catalogue entry: its schema and its risk tier are the bundle's.
    assert set(b.schemas) == names
    assert all("repo_path" in (b.schemas[n].declared or ()) for n in names)
    assert (b.risk_tier("git_status"), b.risk_tier("git_commit"), b.risk_tier("git_reset")) == (0, 2, 3)

    def ask_git(tool: str, args: dict[str, Any]) -> Any:
        return decide(b, build_request(agent={"id": "coder"}, tool=tool, args=args))

    assert ask_git("git_status", {"repo_path": "/workspace/app"}).outcome == pb.ALLOW
    assert ask_git("git_status", {"repo_path": "/etc"}).outcome == pb.DENY   # bundle default
    assert ask_git("git_checkout", {"repo_path": "/workspace/app", "branch_name": "main"}).outcome == pb.DENY
    d = ask_git("git_add", {"repo_path": "/workspace/app", "files": []})
    assert (d.deciding_rule, d.reasons[0].text.split(": ", 1)[1]) == ("invalid_arguments", "$.files: [] should be non-empty")
    d = ask_git("git_diff", {"repo_path": "/workspace/app", "target": "HEAD", "context_lines": "three"})
    assert d.deciding_rule == "invalid_arguments" and "$.context_lines" in d.reasons[0].text


@pytest.mark.parametrize(("typo", "where", "hint"), [
    ("tool.args.repo_pth", (10, 35), "did you mean 'repo_path'?"),
    ("tool.args.branch_nme", (13, 54), "did you mean 'branch_name'?"),
])
def test_a_typo_in_an_argument_of_an_imported_mcp_tool_fails_the_build_at_its_line_and_column(
        tmp_path: Path, git_catalogue: dict[str, Any], typo: str, where: tuple[int, int], hint: str) -> None:
    real = typo.replace("_pth", "_path").replace("_nme", "_name")
    assert real in GIT_POLICY
    bundle = _git_bundle(tmp_path / "typo", git_catalogue, GIT_POLICY.replace(real, typo))
    with pytest.raises(PolicyLoadError) as err:
        load_bundle(bundle)
    (e,) = err.value.errors
    assert (Path(e.file).name, e.line, e.column) == ("git.yaml", *where)
    assert typo.rsplit(".", 1)[1] in e.message and hint in e.message
    assert str(e).startswith(f"{e.file}:{where[0]}:{where[1]}: ")
    # and `decider check` reports it the same way, file:line:col first
    out = subprocess.run([sys.executable, "-m", "decider", "check", str(bundle)], capture_output=True, text=True,
                         timeout=120, cwd=ROOT)
    assert out.returncode != 0
    assert f"git.yaml:{where[0]}:{where[1]}:" in out.stdout + out.stderr


# ---- the fast paths agree with jsonschema ----------------------------------------------------------

FAST_SCHEMAS: list[dict[str, Any]] = [
    {"type": "object", "properties": {"amount": {"type": "number", "minimum": 0}, "order": {"type": "string"}},
     "required": ["amount"]},
    {"type": "object", "properties": {"n": {"type": "integer", "exclusiveMaximum": 10}}, "additionalProperties": False},
    {"type": "object", "properties": {"mode": {"enum": ["a", "b"]}, "s": {"type": "string", "minLength": 2,
                                                                          "maxLength": 3}}},
    {"type": "object", "properties": {"x": {"anyOf": [{"type": "string"}, {"type": "null"}]},
                                      "files": {"type": "array", "items": {"type": "string"}, "minItems": 1},
                                      "o": {"type": "object", "properties": {"k": {"type": "boolean"}},
                                            "additionalProperties": {"type": "number"}}}},
    {"type": "object", "properties": {"b": {"type": ["boolean", "null"]}, "t": {"title": "T", "default": 3}}},
    {"type": "object", "properties": {"flag": {"type": "boolean"}, "name": {"type": "string", "title": "N"},
                                      "any": {}, "nil": {"type": "null"}},
     "required": ["name"], "additionalProperties": False},
]
FAST_VALUES: list[dict[str, Any]] = [
    {}, {"amount": 5}, {"amount": -1}, {"amount": "5"}, {"amount": True}, {"amount": 5, "order": 7},
    {"n": 3}, {"n": 3.5}, {"n": 10}, {"n": 9, "extra": 1}, {"mode": "a"}, {"mode": "c"}, {"mode": 1},
    {"s": "x"}, {"s": "xyz"}, {"s": "xyzw"}, {"x": None}, {"x": "s"}, {"x": 1}, {"files": []},
    {"files": ["a"]}, {"files": ["a", 2]}, {"o": {"k": True, "z": 1}}, {"o": {"k": 1}}, {"o": {"z": "s"}},
    {"b": None}, {"b": False}, {"b": "no"}, {"t": [1, {"a": None}]},
    {"order": None}, {"s": None}, {"name": "x"}, {"name": None}, {"name": "x", "flag": True},
    {"name": "x", "flag": "yes"}, {"name": "x", "flag": None}, {"name": "x", "any": [1]}, {"name": "x", "nil": None},
    {"name": "x", "nil": 0},
]


@pytest.mark.parametrize("schema", FAST_SCHEMAS)
def test_the_fast_checks_agree_with_jsonschema(schema: dict[str, Any]) -> None:
    import jsonschema
    from google.protobuf import struct_pb2

    from decider.bundle.schemas import fast_check, struct_check

    validator = jsonschema.validators.validator_for(schema)(schema)
    fast = fast_check(schema)
    on_struct = struct_check(schema)
    assert fast is not None
    for value in FAST_VALUES:
        args = json.loads(json.dumps(value, default=float))
        args = {k: (float(v) if type(v) is int else v) for k, v in args.items()}   # Struct numbers are floats
        want = validator.is_valid(args)
        assert fast(args) == want, (schema, value)
        if on_struct is not None:
            s = struct_pb2.Struct()
            s.update(args)
            assert not on_struct(s) or want, (schema, value)   # True only when valid
            if want:
                assert on_struct(s), (schema, value)           # and no slow path for valid flat calls


def test_decider_check_catches_the_typo_in_the_example_bundle(tmp_path: Path) -> None:
    import shutil

    shutil.copytree(ROOT / "policies", tmp_path / "p")
    pay = tmp_path / "p" / "payments.yaml"
    pay.write_text(pay.read_text().replace("when: tool.args.amount > 1000.0", "when: tool.args.amout > 1000.0"))
    out = subprocess.run([sys.executable, "-m", "decider", "check", str(tmp_path / "p")], capture_output=True,
                         text=True, cwd=ROOT, timeout=120)
    assert out.returncode == 1
    assert out.stdout.splitlines()[0] == (
        f"{pay}:12:23: tool.args.amout: no tool this policy matches declares argument 'amout' "
        "(declared: amount, currency, order); did you mean 'amount'?")
