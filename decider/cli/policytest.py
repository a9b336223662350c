"""`decider test`: run policy unit tests, with coverage. Exit 0 all pass, 1 a failure, 2 does not load."""

from __future__ import annotations

import argparse
import json
import sys
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

from decider.bundle.compile import load_bundle
from decider.errors import PolicyLoadError
from decider.verify.suites import Coverage, SuiteResult, coverage, load_suites, run_suites, suite_files_for

__all__ = ["register", "run"]

EXIT_OK, EXIT_FAIL, EXIT_LOAD = 0, 1, 2


def register(sub: Any) -> None:
    t = sub.add_parser("test", help="run policy unit tests (*_test.yaml) against a bundle")
    t.add_argument("bundle", help="bundle source folder (its *_test.yaml files are the default suites)")
    t.add_argument("tests", nargs="*", help="test files or folders (default: the bundle folder)")
    t.add_argument("--format", choices=["table", "json", "junit"], default="table")
    t.add_argument("--coverage", action="store_true", help="report which rules the tests exercise")
    t.add_argument("--min-coverage", type=float, metavar="N", help="fail when rule coverage is below N%%")
    t.add_argument("--verbose", "-v", action="store_true", help="list passing cases too")
    t.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    try:
        bundle = load_bundle(args.bundle)
        suites = load_suites(suite_files_for(Path(args.bundle), args.tests))
    except PolicyLoadError as e:
        for err in e.errors:
            print(err, file=sys.stderr)
        print(f"{len(e.errors)} error(s): the bundle or its tests do not load", file=sys.stderr)
        return EXIT_LOAD
    results = run_suites(bundle, suites)
    cov = coverage(bundle, results) if (args.coverage or args.min_coverage is not None) else None
    failed = sum(s.failed for s in results)
    below = cov is not None and args.min_coverage is not None and cov.percent < args.min_coverage
    if args.format == "json":
        print(json.dumps(_json(results, cov), indent=2))
    elif args.format == "junit":
        print(_junit(results))
    else:
        _table(results, cov, args.verbose)
        if below and cov is not None:
            print(f"FAIL: rule coverage {cov.percent:.1f}% is below --min-coverage {args.min_coverage:g}%")
    return EXIT_FAIL if failed or below else EXIT_OK


def _table(results: list[SuiteResult], cov: Coverage | None, verbose: bool) -> None:
    total = sum(len(s.cases) for s in results)
    failed = sum(s.failed for s in results)
    for s in results:
        print(f"{s.file}  ({s.name}: {len(s.cases) - s.failed}/{len(s.cases)} passed)")
        for c in s.cases:
            if c.passed:
                if verbose:
                    print(f"  PASS  {c.name}")
                continue
            print(f"  FAIL  {c.name}  ({c.file}:{c.line})")
            if c.problem:
                print(f"        {c.problem}")
                continue
            exp = c.expected
            print(f"        expected: {exp.outcome}" + (f" by {exp.rule}" if exp.rule else "")
                  + (f" with reason containing {exp.reason!r}" if exp.reason else "")
                  + (f" with labels [{', '.join(exp.labels)}]" if exp.labels is not None else ""))
            print(f"        actual:   {c.actual_outcome} by {c.actual_rule}"
                  + (f" ({c.actual_reasons[0].text})" if c.actual_reasons else "")
                  + (f" with labels [{', '.join(c.actual_labels)}]" if exp.labels is not None else ""))
            print(f"        matched:  {', '.join(c.matched_rules) or '(no rule)'}")
            for e in c.errors:
                print(f"        error:    {e}")
            for path, value in c.fields.items():
                print(f"        {path} = {value}")
    if cov is not None:
        print(f"\nrule coverage: {len(cov.decided)}/{cov.total} rules decided at least one case ({cov.percent:.1f}%)")
        if cov.overridden:
            print(f"  matched but always overridden: {', '.join(cov.overridden)}")
        if cov.never_matched:
            print(f"  never matched: {', '.join(cov.never_matched)}")
        if cov.errored_only:
            print(f"  condition only errored (never held): {', '.join(cov.errored_only)}")
    print(f"\n{total - failed} passed, {failed} failed")


def _json(results: list[SuiteResult], cov: Coverage | None) -> dict[str, Any]:
    out: dict[str, Any] = {
        "passed": sum(len(s.cases) - s.failed for s in results),
        "failed": sum(s.failed for s in results),
        "suites": [
            {"name": s.name, "file": s.file, "cases": [
                {"name": c.name, "line": c.line, "passed": c.passed,
                 "expected": c.expected.model_dump(exclude_none=True),
                 "actual": {"outcome": c.actual_outcome, "rule": c.actual_rule,
                            "reasons": [r.text for r in c.actual_reasons], "labels": list(c.actual_labels)},
                 "matched_rules": list(c.matched_rules), "errors": list(c.errors), "fields": c.fields,
                 **({"problem": c.problem} if c.problem else {})}
                for c in s.cases]}
            for s in results
        ],
    }
    if cov is not None:
        out["coverage"] = {"percent": round(cov.percent, 2), "total_rules": cov.total, "decided": list(cov.decided),
                           "overridden": list(cov.overridden), "never_matched": list(cov.never_matched),
                           "errored_only": list(cov.errored_only)}
    return out


def _junit(results: list[SuiteResult]) -> str:
    root = ET.Element("testsuites", tests=str(sum(len(s.cases) for s in results)),
                      failures=str(sum(s.failed for s in results)))
    for s in results:
        suite = ET.SubElement(root, "testsuite", name=s.name, file=s.file, tests=str(len(s.cases)),
                              failures=str(s.failed))
        for c in s.cases:
            tc = ET.SubElement(suite, "testcase", classname=s.name, name=c.name, file=c.file, line=str(c.line))
            if not c.passed:
                msg = c.problem or (f"expected {c.expected.outcome}" + (f" by {c.expected.rule}" if c.expected.rule
                                    else "") + f", got {c.actual_outcome} by {c.actual_rule}")
                fail = ET.SubElement(tc, "failure", message=msg)
                fail.text = "\n".join([f"matched: {', '.join(c.matched_rules)}", *c.errors,
                                       *(f"{k} = {v}" for k, v in c.fields.items())])
    return ET.tostring(root, encoding="unicode")
