"""CSV imports of completed phases: what a row must hold, how bad rows are reported (line and CSV
column), and `milestone-sync import phases` then `sync --once` against a real SQLite store."""

from __future__ import annotations

from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path

import pytest
from typer.testing import CliRunner

from adapters.generic.csv_import import COLUMNS, REQUIRED, read_file, read_rows
from adapters.store.engine import open_store
from connector.domain.model import MilestoneState
from connector.ports import DeliveryStatus, PhaseStatus
from scheduler.cli import EXIT_ATTENTION, app

HEADER = "event_id,completed_at,work_item_key,title,client_key,client_name,work_type,fee,status"
ACME = (
    "evt-1,2026-11-02T08:55:00Z,WI-1,2026 Form 1120 - Acme,CL-ACME,Acme LLC,Tax Return,3000.00,"
    "Completed"
)
BETA = (
    ",2026-11-03T16:00:00-06:00,WI-2,2026 Form 1040 - Beta,CL-BETA,Beta Ltd,Tax Return,,Completed"
)


def csv_of(*lines: str) -> str:
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- read_rows


def test_good_rows_become_events_with_their_line_numbers() -> None:
    result = read_rows(csv_of(HEADER, ACME, BETA), "export.csv")

    assert result.problems == []
    assert [line for line, _ in result.events] == [2, 3]
    (_, acme), (_, beta) = result.events
    assert acme.event_id == "evt-1"
    assert acme.type == "phase.completed"
    assert acme.occurred_at == datetime(2026, 11, 2, 8, 55, tzinfo=UTC)
    assert (acme.work_item.key, acme.work_item.client_key) == ("WI-1", "CL-ACME")
    assert acme.work_item.fee == "3000.00"  # kept as text: never a float
    assert acme.phase.status == "Completed"
    assert beta.work_item.fee is None  # an empty cell is "not given"
    assert beta.occurred_at.astimezone(UTC) == datetime(2026, 11, 3, 22, 0, tzinfo=UTC)


def test_a_row_without_event_id_gets_a_stable_one() -> None:
    first = read_rows(csv_of(HEADER, BETA), "a.csv").events[0][1]
    again = read_rows(csv_of(HEADER, "", BETA), "b.csv").events[0][1]
    changed = read_rows(csv_of(HEADER, BETA.replace("Completed", "Filed")), "c.csv").events[0][1]

    assert first.event_id.startswith("row-")
    assert again.event_id == first.event_id  # same cells, whatever the file or line
    assert changed.event_id != first.event_id


def test_every_column_is_read() -> None:
    header = ",".join(COLUMNS)
    values = {
        "event_id": "evt-9",
        "type": "phase.reopened",
        "completed_at": "2026-11-30T23:00:00+00:00",
        "work_item_key": "CL-9:2026-11",
        "title": "November close",
        "client_key": "CL-9",
        "client_name": "Nine Inc",
        "ledger_customer_id": "70",
        "work_type": "Bookkeeping",
        "template": "Monthly close",
        "fee": "450",
        "currency": "CAD",
        "kind": "recurring_close",
        "period": "2026-11",
        "start_date": "2026-12-01",
        "due_date": "2026-12-15",
        "status": "",
        "secondary": "",
        "close_status": "Done",
        "section_done": "",
    }

    result = read_rows(csv_of(header, ",".join(values[c] for c in COLUMNS)), "all.csv")

    assert result.problems == []
    [(_, e)] = result.events
    assert e.type == "phase.reopened"
    assert e.work_item.model_dump(exclude_none=True) == {
        "key": "CL-9:2026-11",
        "title": "November close",
        "client_key": "CL-9",
        "client_name": "Nine Inc",
        "ledger_customer_id": "70",
        "work_type": "Bookkeeping",
        "template": "Monthly close",
        "fee": "450",
        "currency": "CAD",
        "kind": "recurring_close",
        "period": "2026-11",
        "start_date": date(2026, 12, 1),
        "due_date": date(2026, 12, 15),
    }
    assert e.phase.close_status == "Done"


def test_missing_required_columns_are_named_and_no_row_is_read() -> None:
    result = read_rows(csv_of("work_item_key,title,status", "WI-1,T,Completed"), "short.csv")

    assert result.events == []
    [problem] = result.problems
    assert problem.startswith("short.csv: the header lacks completed_at, client_key, client_name")
    assert "work_item_key" not in problem.split("(columns:")[0]


def test_every_required_column_is_required() -> None:
    for column in REQUIRED:
        header = ",".join(c for c in HEADER.split(",") if c != column)
        result = read_rows(csv_of(header), "x.csv")
        assert result.problems and column in result.problems[0], column


def test_an_unknown_column_is_named_and_no_row_is_read() -> None:
    result = read_rows(csv_of(HEADER + ",Amount", ACME + ",3000"), "extra.csv")

    assert result.events == []
    assert result.problems[0].startswith("extra.csv: unknown columns Amount (columns: event_id,")


def test_bad_rows_are_reported_by_line_and_csv_column_and_good_rows_go_on() -> None:
    text = csv_of(
        HEADER,
        ACME,
        ACME.replace("evt-1", "evt-2").replace("08:55:00Z", "08:55:00"),  # no time zone
        ACME.replace("evt-1", "evt-3").replace("3000.00", "three thousand"),
        BETA,
        ACME.replace("evt-1", "evt-4").replace("WI-1", ""),
        ACME.replace("evt-1", "evt-5").replace("2026-11-02T", "2026-13-02T"),
    )

    result = read_rows(text, "export.csv")

    assert [line for line, _ in result.events] == [2, 5]
    assert len(result.problems) == 4
    no_zone, bad_fee, no_key, bad_date = result.problems
    assert no_zone.startswith("export.csv, line 3: completed_at: ")
    assert "timezone" in no_zone
    assert bad_fee.startswith("export.csv, line 4: fee: ")
    assert "'three thousand' is not a decimal amount" in bad_fee
    assert no_key.startswith("export.csv, line 6: work_item_key: ")  # the CSV column name
    assert bad_date.startswith("export.csv, line 7: completed_at: ")
    for problem in result.problems:
        assert "work_item." not in problem  # never the event's field paths
        assert "occurred_at" not in problem


def test_a_bad_date_column_is_named() -> None:
    header = HEADER + ",start_date,due_date"

    result = read_rows(csv_of(header, ACME + ",2026-11-31,2026-12-01"), "dates.csv")

    [problem] = result.problems
    assert problem.startswith("dates.csv, line 2: start_date: ")


@pytest.mark.parametrize(
    ("cells", "column", "words"),
    [
        ({"kind": "project"}, "kind", "'work_item' or 'recurring_close'"),
        ({"currency": "usd"}, "currency", "pattern"),
        ({"period": "Nov 2026"}, "period", "pattern"),
        ({"type": "phase.started"}, "type", "phase.completed"),
        ({"status": "", "close_status": ""}, "status", "exactly one of status"),
        ({"status": "Completed", "close_status": "Done"}, "status", "exactly one of status"),
    ],
)
def test_other_bad_cells_speak_in_column_names(
    cells: dict[str, str], column: str, words: str
) -> None:
    row = dict(zip(HEADER.split(","), ACME.split(","), strict=True))
    row.update({"kind": "", "currency": "", "period": "", "type": "", "close_status": ""})
    row.update(cells)

    result = read_rows(csv_of(",".join(row), ",".join(row.values())), "cells.csv")

    [problem] = result.problems
    assert problem.startswith("cells.csv, line 2: "), problem
    assert column in problem and words in problem, problem


def test_a_fee_that_looks_like_a_float_is_fine_as_text() -> None:
    for fee in ("3000.00", "3000", "0.5", "1e3"):
        result = read_rows(csv_of(HEADER, ACME.replace("3000.00", fee)), "fees.csv")
        assert result.problems == [], fee
        assert result.events[0][1].work_item.fee == fee
        assert Decimal(result.events[0][1].work_item.fee or "") == Decimal(fee)


def test_blank_lines_and_empty_rows_are_ignored_but_lines_still_count() -> None:
    text = csv_of(HEADER, "", ACME, "   ", ",,,,,,,,", "", ACME.replace("WI-1", ""), "")

    result = read_rows(text, "gaps.csv")

    assert [line for line, _ in result.events] == [3]
    assert [p.split(":")[0] for p in result.problems] == ["gaps.csv, line 7"]


def test_spaces_around_headers_and_cells_are_trimmed() -> None:
    header = " , ".join(HEADER.split(","))
    row = " , ".join(ACME.split(","))

    result = read_rows(csv_of(header, row), "spaced.csv")

    assert result.problems == []
    assert result.events[0][1].work_item.client_name == "Acme LLC"


def test_a_quoted_cell_may_hold_commas_and_newlines() -> None:
    row = ACME.replace("2026 Form 1120 - Acme", '"Form 1120, Acme\nLLC"')

    result = read_rows(csv_of(HEADER, row, BETA.replace("CL-BETA", "")), "quoted.csv")

    assert result.events[0][1].work_item.title == "Form 1120, Acme\nLLC"
    # the next row starts on line 4 of the file; a problem names the line it ends on
    assert result.problems[0].startswith("quoted.csv, line 4: client_key: ")


def test_read_file_handles_a_byte_order_mark(tmp_path: Path) -> None:
    path = tmp_path / "excel.csv"
    path.write_bytes(b"\xef\xbb\xbf" + csv_of(HEADER, ACME).replace("\n", "\r\n").encode())

    result = read_file(path)

    assert result.problems == []
    assert [e.event_id for _, e in result.events] == ["evt-1"]


def test_read_file_reports_a_missing_file_and_text_that_is_not_utf8(tmp_path: Path) -> None:
    latin = tmp_path / "latin.csv"
    latin.write_bytes(csv_of(HEADER, ACME.replace("Acme LLC", "Acmé LLC")).encode("latin-1"))

    missing = read_file(tmp_path / "nope.csv")
    not_utf8 = read_file(latin)

    assert missing.events == [] and "no such file" in missing.problems[0]
    assert not_utf8.events == [] and "not UTF-8" in not_utf8.problems[0]


# --------------------------------------------------------------------------- the command line

CONFIG = """
[firm]
id = "smith-cpa"
name = "Smith & Co CPAs"
currency = "USD"

[[sources]]
id = "imports"
kind = "csv"

[ledger]
kind = "memory"

[payments]
kind = "memory"

[collection]
default_mode = "approval_required"

[[plans]]
id = "tax-return"
name = "Tax return"
match = { source = "imports", work_type = "Tax Return" }
fee = "3000.00"

[[plans.milestones]]
id = "filed"
name = "Filed"
trigger = { status = "Completed" }
remainder = true
"""

runner = CliRunner()


class Firm:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.config = root / "milestone-sync.toml"
        self.config.write_text(CONFIG)
        self.database_url = f"sqlite:///{root / 'state.db'}"

    def run(self, *args: str) -> tuple[int, str, str]:
        result = runner.invoke(
            app, [*args, "-c", str(self.config), "--database-url", self.database_url]
        )
        return result.exit_code, result.stdout, result.stderr

    def csv(self, name: str, *lines: str) -> str:
        path = self.root / name
        path.write_text(csv_of(*lines))
        return str(path)


@pytest.fixture
def firm(tmp_path: Path) -> Firm:
    return Firm(tmp_path)


def test_import_queues_rows_once_and_a_second_run_reports_duplicates(firm: Firm) -> None:
    export = firm.csv("export.csv", HEADER, ACME, BETA)

    first = firm.run("import", "phases", export)
    second = firm.run("import", "phases", export, "--source", "imports")

    assert first[0] == 0, first
    assert "queued 2 phase(s) for imports; 0 already imported" in first[1]
    assert second[0] == 0, second
    assert "queued 0 phase(s) for imports; 2 already imported" in second[1]
    store = open_store(firm.database_url)
    try:
        with store.unit_of_work("smith-cpa") as uow:
            counts = uow.inbox.counts()
    finally:
        store.dispose()
    assert counts == {("imports", DeliveryStatus.PENDING): 2}


def test_bad_rows_exit_3_with_their_lines_on_stderr_and_good_rows_are_queued(
    firm: Firm,
) -> None:
    export = firm.csv(
        "export.csv",
        HEADER,
        ACME,
        ACME.replace("evt-1", "evt-2").replace("3000.00", "$3,000"),
        BETA,
        ACME.replace("evt-1", "evt-3").replace("CL-ACME", ""),
    )

    code, stdout, stderr = firm.run("import", "phases", export)

    assert code == EXIT_ATTENTION
    assert "queued 2 phase(s) for imports" in stdout
    assert "2 row(s) skipped" in stderr
    assert f"{export}, line 3: fee: " in stderr
    assert f"{export}, line 5: client_key: " in stderr
    assert "line 2" not in stderr and "line 4" not in stderr


def test_a_header_problem_queues_nothing_and_exits_3(firm: Firm) -> None:
    export = firm.csv("export.csv", HEADER.replace("client_name", "customer"), ACME)

    code, stdout, stderr = firm.run("import", "phases", export)

    assert code == EXIT_ATTENTION
    assert "queued 0 phase(s)" in stdout
    assert "customer" in stderr and "client_name" in stderr


def test_import_refuses_a_source_that_takes_no_imports(firm: Firm) -> None:
    export = firm.csv("export.csv", HEADER, ACME)

    code, _, stderr = firm.run("import", "phases", export, "--source", "karbon")

    assert code == 1
    assert "--source must name a source of kind csv or webhook" in stderr
    assert "imports" in stderr


def test_sync_maps_imported_phases_once(firm: Firm) -> None:
    export = firm.csv("export.csv", HEADER, ACME, BETA)
    assert firm.run("import", "phases", export)[0] == 0

    code, stdout, stderr = firm.run("sync", "--once")
    firm.run("import", "phases", export)  # re-importing after the sync is harmless too
    again = firm.run("sync", "--once")
    status = firm.run("status")

    assert code == 0, stdout + stderr
    assert "poll       2" in stdout and "map        2" in stdout
    assert again[0] == 0 and "poll       0" in again[1] and "map        0" in again[1]
    assert "awaiting_approval" in status[1] and "6000.00 USD" in status[1]
    store = open_store(firm.database_url)
    try:
        with store.unit_of_work("smith-cpa") as uow:
            phases = uow.phases.list()
            milestones = uow.milestones.list()
            counts = uow.inbox.counts()
    finally:
        store.dispose()
    assert sorted((p.phase.work_item, p.status) for p in phases) == [
        ("WI-1", PhaseStatus.MAPPED),
        ("WI-2", PhaseStatus.MAPPED),
    ]
    assert sorted((m.work_item, m.state, str(m.amount.amount)) for m in milestones) == [
        ("WI-1", MilestoneState.AWAITING_APPROVAL, "3000.00"),
        ("WI-2", MilestoneState.AWAITING_APPROVAL, "3000.00"),
    ]
    assert counts == {("imports", DeliveryStatus.DONE): 2}
