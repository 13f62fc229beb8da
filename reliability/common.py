"""What every suite shares: its report (figures and problems), printed and written."""

from __future__ import annotations

import json
import platform
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.harness import log_record

RESULTS = Path(__file__).parent / "results"


@dataclass
class Report:
    """One suite run: ``figures`` (label -> value, in order) and ``problems`` (each a broken
    invariant, in a sentence). The run passes when there are no problems."""

    suite: str
    settings: dict[str, Any] = field(default_factory=dict)
    figures: dict[str, Any] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    tables: dict[str, Any] = field(default_factory=dict)  # written, not printed
    started: float = field(default_factory=time.time)

    def figure(self, label: str, value: Any) -> None:
        self.figures[label] = value

    def problem(self, text: str) -> None:
        self.problems.append(text)

    def finish(self) -> int:
        """Print the report, write ``results/<suite>.json``; 0 when it passed, else 1."""
        seconds = time.time() - self.started
        width = max((len(label) for label in self.figures), default=0)
        print(f"\n== {self.suite} ({seconds:.0f} s) {self.settings}")
        for label, value in self.figures.items():
            print(f"  {label:<{width}}  {_show(value)}")
        for text in self.problems:
            print(f"  PROBLEM: {text}")
        print(f"  {'FAILED' if self.problems else 'passed'}: {len(self.problems)} problem(s)")
        RESULTS.mkdir(exist_ok=True)
        record = {
            "suite": self.suite,
            "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.started)),
            "seconds": round(seconds, 1),
            "machine": f"{platform.node()} {platform.machine()} python {sys.version.split()[0]}",
            "settings": self.settings,
            "figures": self.figures,
            "tables": self.tables,
            "problems": self.problems,
        }
        path = RESULTS / f"{self.suite}.json"
        path.write_text(json.dumps(record, indent=2, default=str) + "\n")
        return 1 if self.problems else 0


def _show(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:,.2f}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return str(value)


def log_summary(line: str) -> str:
    """A log line in short: a JSON record's message, and its exception's last frame and
    last line."""
    record = log_record(line)
    if record is None:
        return line[:300]
    exception = str(record.get("exception", "")).strip().splitlines()
    where = [x.strip() for x in exception if x.strip().startswith("File ")][-1:]
    return " | ".join([str(record.get("message", "")), *where, *exception[-1:]])[:600]


def report_logged(report: Report, name: str, lines: list[str], most: int = 10) -> None:
    """Each of ``lines`` (what process ``name`` logged that it should not have) is a
    problem, the first ``most`` in short; the whole lines, tracebacks too, are kept in
    results/<suite>-<name>-problems.log."""
    if not lines:
        return
    kept = RESULTS / f"{report.suite}-{name}-problems.log"
    RESULTS.mkdir(exist_ok=True)
    kept.write_text("\n".join(lines) + "\n")
    for line in lines[:most]:
        report.problem(f"{name} logged ({kept}): {log_summary(line)}")
    if len(lines) > most:
        report.problem(f"{name} logged {len(lines) - most} more such lines ({kept})")
