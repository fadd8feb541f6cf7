"""A SIGKILL in the middle of acknowledged writes loses none of them and leaves no half entry."""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import sqlalchemy as sa

from spiffed.server.datastore import open_datastore, schema

WRITER = r"""
import asyncio, sys
from spiffed.server.datastore import RegistrationEntry, Selector, open_datastore

async def main() -> None:
    ds = await open_datastore("sqlite3", sys.argv[1])
    i = 0
    while True:
        made = await ds.create_entry(RegistrationEntry(
            f"spiffe://td/w{i}", "spiffe://td/agent",
            tuple(Selector("t", f"{i}-{k}") for k in range(3)),
            dns_names=(f"a{i}.example", f"b{i}.example"),
        ))
        sys.stdout.write(made.id + "\n")
        sys.stdout.flush()
        i += 1

asyncio.run(main())
"""


def test_sigkill_during_entry_writes_keeps_every_acknowledged_write(tmp_path: Path) -> None:
    db = tmp_path / "ds.sqlite3"
    proc = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(db)], stdout=subprocess.PIPE, text=True, bufsize=1
    )
    acked: list[str] = []
    deadline = time.monotonic() + 60
    assert proc.stdout is not None
    try:
        while len(acked) < 200:
            assert time.monotonic() < deadline, "writer too slow"
            ready, _, _ = select.select([proc.stdout], [], [], 1)
            if ready:
                line = proc.stdout.readline()
                assert line, f"writer exited early with {proc.poll()}"
                acked.append(line.strip())
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    # lines written before the kill but not yet read are acknowledged too
    acked += [line.strip() for line in proc.stdout.read().splitlines() if line.strip()]

    import asyncio

    async def check() -> None:
        ds = await open_datastore("sqlite3", str(db))
        try:
            async with ds.engine.connect() as conn:
                ok = (await conn.exec_driver_sql("PRAGMA integrity_check")).scalar()
                assert ok == "ok"
                e, s, d = schema.registered_entries, schema.selectors, schema.dns_names
                per_entry = (
                    await conn.execute(
                        sa.select(
                            e.c.entry_id,
                            sa.select(sa.func.count())
                            .where(s.c.registered_entry_id == e.c.id)
                            .scalar_subquery(),
                            sa.select(sa.func.count())
                            .where(d.c.registered_entry_id == e.c.id)
                            .scalar_subquery(),
                        )
                    )
                ).all()
                n_events = (
                    await conn.execute(sa.select(sa.func.count()).select_from(schema.events))
                ).scalar_one()
            stored = {row[0] for row in per_entry}
            assert set(acked) <= stored
            assert len(stored) - len(acked) <= 1  # at most the one committed but unacknowledged
            assert all((row[1], row[2]) == (3, 2) for row in per_entry)
            assert n_events == len(stored)
            for entry_id in acked[-5:]:
                got = await ds.get_entry(entry_id)
                assert len(got.selectors) == 3 and len(got.dns_names) == 2
        finally:
            await ds.close()

    asyncio.run(check())
