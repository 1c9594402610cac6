"""Real kills: `milestone-sync sync --once` as a child process, SIGKILLed at random moments while
it talks to the QuickBooks emulator (which commits every invoice write and then drops the
connection), restarted until a run completes. Whatever the moment of death (mid-request,
mid-transaction, between a batch and its bookkeeping), QuickBooks ends with exactly one invoice
per milestone.

Xero is covered by the in-process kill test (test_ledger_exactly_once.py): under "drop every
write" its adapter resends each write under its Idempotency-Key with real back-off, seconds per
batch in a child process that cannot share the test's scaled clock."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

from adapters.quickbooks.emulator import QuickBooksEmulator
from adapters.store.engine import open_store
from connector.domain.model import MilestoneState
from tests.integration.ledger_firm import (
    TENANT,
    environment,
    store_connection,
    write_config,
    write_work,
)

MILESTONES = 150


def write_firm(directory: Path, emulator: QuickBooksEmulator) -> Path:
    customers = [emulator.add_customer(f"CL-{n} LLC") for n in range(8)]
    write_work(
        directory,
        [
            (f"WI-{n:03d}", f"CL-{n % 8}", customers[n % 8], f"{200 + n}.00")
            for n in range(MILESTONES)
        ],
    )
    return write_config(directory, "quickbooks", emulator, 'options = { batch_from = "10" }', "")


def all_invoiced(database_url: str) -> bool:
    store = open_store(database_url)
    try:
        with store.unit_of_work(TENANT) as uow:
            states = [m.state for m in uow.milestones.list()]
    finally:
        store.dispose()
    return len(states) == MILESTONES and set(states) == {MilestoneState.INVOICED}


def test_sigkill_at_random_moments_never_duplicates_an_invoice(tmp_path: Path) -> None:
    rng = random.Random(4_2026)
    emulator = QuickBooksEmulator()
    emulator.start()
    try:
        config = write_firm(tmp_path, emulator)
        database = f"sqlite:///{tmp_path / 'state.db'}"
        store_connection(emulator, "quickbooks", emulator.realm_id, database)
        emulator.drop_every_write(True)
        env = {**os.environ, **environment(emulator)}
        command = [sys.executable, "-m", "scheduler", "sync", "--once", "-c", str(config)]
        command += ["--database-url", database]
        kills, finished = 0, False
        log = tmp_path / "child.log"
        for _ in range(60):
            seen = len(emulator.log.snapshot())
            # the first runs, and later most of them, die a few requests into their work
            dies = kills < 4 or rng.random() < 0.6
            target = seen + rng.randint(1, 4) if dies else None
            with log.open("wb") as errors:
                child = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=errors)
                while child.poll() is None and (
                    target is None or len(emulator.log.snapshot()) < target
                ):
                    time.sleep(0.005)
                if child.poll() is None:
                    time.sleep(rng.uniform(0, 0.05))  # inside the request or just after it
                    child.send_signal(signal.SIGKILL)
                    child.wait(timeout=30)
                    kills += 1
                    continue
            assert child.returncode in (0, 3), log.read_text()
            if all_invoiced(database):
                finished = True
                break
        assert finished, "the runs never finished invoicing"
        assert kills >= 3
        invoices = emulator.invoices()
        notes = Counter(i.get("PrivateNote") for i in invoices)
        assert len(invoices) == MILESTONES
        assert [note for note, n in notes.items() if n > 1] == []
        assert emulator.violations() == []
    finally:
        emulator.stop()
