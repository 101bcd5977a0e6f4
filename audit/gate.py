"""`make audit` gates over the synthesized app (cdk.out/<env>/).

    python audit/gate.py nag CDK_OUT
        every environment's cdk-nag AwsSolutions report: zero unacknowledged findings, and a
        reason on every acknowledgement.
    python audit/gate.py checkov CHECKOV_JSON ACCEPTED_YAML
        every failed checkov check must match an entry of the reviewed acceptance file (check
        id + resource logical-id prefix + template glob) that gives a reason; entries that
        match nothing are reported as stale so the file does not rot.

Exit status 0 only when the gate holds. Standard library + PyYAML only.
"""

from __future__ import annotations

import fnmatch
import json
import sys
from pathlib import Path

import yaml


def nag(cdk_out: Path) -> int:
    reports = sorted(cdk_out.glob("*/validation-report.json"))
    if not reports:
        print(f"nag: no validation-report.json under {cdk_out}/*/ (run `make synth`)")
        return 1
    bad = 0
    for path in reports:
        env = path.parent.name
        plugins = [r for r in json.loads(path.read_text())["pluginReports"] if r["pluginName"] == "AwsSolutions"]
        if len(plugins) != 1:
            print(f"nag: {env}: AwsSolutions did not run")
            bad += 1
            continue
        report = plugins[0]
        for violation in report["violations"]:
            print(f"nag: {env}: UNACKNOWLEDGED {violation.get('ruleName')}: {violation.get('description', '')[:160]}")
            bad += 1
        suppressed = report.get("suppressedViolations", [])
        for finding in suppressed:
            if not str(finding.get("suppressionReason") or finding.get("reason") or "").strip():
                print(f"nag: {env}: acknowledgement without a reason: {finding.get('ruleName')}")
                bad += 1
        print(f"nag: {env}: {report['conclusion']}, {len(report['violations'])} unacknowledged, "
              f"{len(suppressed)} acknowledged with reasons")
    return 1 if bad else 0


def _accepts(entry: dict, check_id: str, file_path: str, resource: str) -> bool:
    logical_id = resource.split(".", 1)[-1]
    return (entry["check"] == check_id
            and fnmatch.fnmatch(file_path.lstrip("/"), entry.get("templates", "*"))
            and any(logical_id.startswith(prefix) for prefix in entry["resources"]))


def checkov(results: Path, accepted_file: Path) -> int:
    raw = json.loads(results.read_text())
    runs = raw if isinstance(raw, list) else [raw]
    failed = [f for run in runs if isinstance(run, dict) and "results" in run
              for f in run["results"]["failed_checks"]]
    passed = sum(run["summary"]["passed"] for run in runs if isinstance(run, dict) and "summary" in run)
    accepted = yaml.safe_load(accepted_file.read_text())["accepted"]
    for entry in accepted:
        if not str(entry.get("reason", "")).strip() or not entry.get("resources"):
            print(f"checkov: acceptance of {entry.get('check')} needs resources and a reason")
            return 1
    used = [0] * len(accepted)
    open_findings = []
    for finding in failed:
        hits = [i for i, e in enumerate(accepted)
                if _accepts(e, finding["check_id"], finding["file_path"], finding["resource"])]
        for i in hits:
            used[i] += 1
        if not hits:
            open_findings.append(finding)
    for finding in open_findings:
        print(f"checkov: OPEN {finding['check_id']} {finding['file_path']} {finding['resource']}: "
              f"{finding['check_name']}")
    for entry, count in zip(accepted, used):
        if not count:
            print(f"checkov: stale acceptance (matches nothing now): {entry['check']} {entry['resources']}")
    print(f"checkov: {passed} passed, {len(failed)} failed, {len(failed) - len(open_findings)} accepted "
          f"({accepted_file}), {len(open_findings)} open")
    return 1 if open_findings else 0


def main(argv: list[str]) -> int:
    if len(argv) == 2 and argv[0] == "nag":
        return nag(Path(argv[1]))
    if len(argv) == 3 and argv[0] == "checkov":
        return checkov(Path(argv[1]), Path(argv[2]))
    print(__doc__)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
