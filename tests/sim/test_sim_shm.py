"""The shared-memory table: its layout declared once, read in C under the seqlock, and seen
from other processes equal to the host, never torn."""

from __future__ import annotations

import json
import os
import re
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from mux import _fast, records
from mux.records import RECORD_SIZE, SHUTDOWN_SUSPEND, DomainRecord, make_flags
from mux.sim import _simfast, shm
from mux.sim.host import Hypervisor, SimHost
from mux.sim.shm import ShmReader, ShmTable

pytest_plugins = ("simhelpers",)  # the sim, sim422, sim_factory, procs fixtures


def test_table_of_a_running_sim_equals_its_domains(sim):
    sim.ctl.shutdown(2, "reboot")
    sim.ctl.suspend(3)
    sim.ctl.destroy(4, zombie=True)
    sim.ctl.destroy(5)
    sim.ctl.create(name="late")
    with ShmReader(sim.shm) as reader:
        snap = reader.snapshot()
    table = snap.domains()
    listed = sim.ctl.list()
    assert [r.domid for r in table] == [d["domid"] for d in listed]
    for rec, row in zip(table, listed, strict=True):
        assert rec.uuid == row["uuid"]
        assert rec.flags == row["flags"]
        assert rec.cpu_time == row["cpu_time"]
    by_id = {r.domid: r for r in table}
    assert by_id[2].shutdown and by_id[2].reason == records.SHUTDOWN_REBOOT
    assert by_id[3].reason == records.SHUTDOWN_SUSPEND
    assert by_id[4].dying
    assert 5 not in by_id
    assert by_id[0].reason == records.SHUTDOWN_NONE
    assert snap.virqs == 5  # shutdown, suspend, destroy 4 (dying), destroy 5 (dying, gone)
    assert 0 < snap.stamp <= time.clock_gettime_ns(time.CLOCK_MONOTONIC)


READER = r"""
import json, sys, time
from mux.sim.shm import ShmReader
path, n, seconds = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
snaps = bad = 0
states = set()
problems = []
with ShmReader(path) as reader:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        snap = reader.snapshot()
        doms = snap.domains()
        snaps += 1
        ids = [d.domid for d in doms]
        guests = doms[1:]
        ok = (
            ids == sorted(set(ids))
            and ids[:1] == [0]
            and len(guests) in (0, n)
            and len({(g.flags, g.cpu_time > 0) for g in guests}) <= 1
        )
        if not ok:
            bad += 1
            if len(problems) < 3:
                problems.append([len(guests), sorted({g.flags for g in guests})[:4]])
        elif guests:
            states.add(guests[0].flags)
print(json.dumps({"snapshots": snaps, "bad": bad, "states": len(states), "problems": problems}))
"""


def test_readers_never_see_a_half_applied_batch(tmp_path):
    """Batches of 1000 domains change in one seqlock section each; a reader in another
    process, copying under the seqlock, must only ever see whole states."""
    n = 1000
    table = ShmTable(str(tmp_path / "domains.shm"))

    class NoToolstack:  # only the table matters here
        def write_domain(self, dom): ...
        def introduce(self, domid): ...
        def resume(self, domid): ...
        def release(self, domid): ...
        def remove_domain(self, domid, uuid): ...

    hv = Hypervisor(table)
    host = SimHost(hv, NoToolstack())
    env = dict(os.environ, PYTHONPATH=str(os.getcwd()))
    reader = subprocess.Popen(
        [sys.executable, "-c", READER, table.path, str(n), "2.0"],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        reasons = [0, 1, 2, 3, 4, 5]
        deadline = time.monotonic() + 2.5
        rounds = 0
        while reader.poll() is None and time.monotonic() < deadline:
            host.create(count=n)
            host.shutdown("all", reasons[rounds % len(reasons)])
            host.destroy("all")
            rounds += 1
        out, _ = reader.communicate(timeout=30)
    finally:
        if reader.poll() is None:
            reader.kill()
            reader.wait(timeout=10)
        table.close()
    result = json.loads(out)
    assert rounds > 5
    assert result["snapshots"] > 50
    assert result["bad"] == 0, result["problems"]
    assert result["states"] >= 2  # it did see the table change under it


# -- the layout, declared once (mux/sim/shm_layout.h) ---------------------------------------------

REPO = Path(__file__).resolve().parents[2]
LAYOUT_H = REPO / "mux" / "sim" / "shm_layout.h"
INTERNALS = REPO / "docs" / "internals.md"


def header_defines() -> dict[str, int | str]:
    """XM_SHM_* of shm_layout.h by name (without the prefix); references resolved."""
    found: dict[str, str] = dict(
        re.findall(r"^#define XM_SHM_(\w+)[ \t]+(\S+)", LAYOUT_H.read_text(), re.MULTILINE)
    )
    out: dict[str, int | str] = {}
    for name, value in found.items():
        if value.startswith('"'):
            out[name] = value.strip('"')
        elif value.startswith("XM_SHM_"):
            out[name] = int(found[value.removeprefix("XM_SHM_")], 0)
        else:
            out[name] = int(value.strip("()"), 0)
    return out


def test_the_extension_exports_the_header_numbers():
    """_simfast, and through it shm.py, carries the header's numbers, not numbers of its own."""
    defs = header_defines()
    assert _simfast.SHM_MAGIC == defs["MAGIC"].encode() == b"XMUXSHM1"
    assert len(_simfast.SHM_MAGIC) == defs["MAGIC_SIZE"]
    names = ["VERSION", "HEADER_SIZE", *(name for name in defs if name.startswith("OFF_"))]
    assert len(names) == 14
    for name in names:
        assert getattr(_simfast, f"SHM_{name}") == defs[name], name
    for name in ("MAGIC", "VERSION", "OFF_MAGIC", "OFF_COUNT", "OFF_SEQLOCK", "OFF_RECORDS"):
        assert getattr(shm, f"SHM_{name}") == getattr(_simfast, f"SHM_{name}"), name


def internals_rows() -> list[tuple[str, str, str]]:
    """(offset, type, field) of the layout table in docs/internals.md."""
    text = INTERNALS.read_text()
    section = text[text.index("## The simulated host's shared-memory table") :]
    rows = []
    for line in section.splitlines()[1:]:
        if rows and not line.startswith("|"):
            break
        if line.startswith("|") and not line.startswith(("| offset", "| ---")):
            rows.append(tuple(cell.strip() for cell in line.strip("|").split("|")))
    return rows


# How docs/internals.md's description of each field begins -> the header's name for its offset
DOC_FIELDS = {
    "magic": "OFF_MAGIC",
    "layout version": "OFF_VERSION",
    "record size": "OFF_RECORD_SIZE",
    "capacity": "OFF_CAPACITY",
    "count": "OFF_COUNT",
    "seqlock": "OFF_SEQLOCK",
    "CLOCK_MONOTONIC": "OFF_CHANGE_STAMP",
    "number of changes": "OFF_CHANGES",
    "number of VIRQ_DOM_EXC": "OFF_VIRQS",
    "unique ids": "OFF_UNIQUE_IDS",
    "Xen release": "OFF_XEN_VERSION",
    "`xc_domaininfo_t`": "OFF_RECORDS",
}
TYPE_SIZES = {"u32": 4, "u64": 8}


def test_internals_table_matches_the_header():
    """Each row of docs/internals.md's table is where shm_layout.h puts that field, the rows
    leave no gap, and the values it quotes are the header's."""
    defs = header_defines()
    rows = internals_rows()
    seen = {}
    expected_offset = 0
    for offset, ctype, field in rows:
        if field.startswith("reserved"):
            first, last = (int(x) for x in offset.split(".."))
            assert first == expected_offset, (offset, field)
            assert last == defs["HEADER_SIZE"] - 1, (offset, field)
            expected_offset = last + 1
            continue
        (name,) = [n for words, n in DOC_FIELDS.items() if field.startswith(words)]
        assert int(offset) == defs[name] == expected_offset, (offset, field)
        seen[name] = int(offset)
        if name == "OFF_MAGIC":
            assert ctype == f"char[{defs['MAGIC_SIZE']}]" and f"`{defs['MAGIC']}`" in field
            expected_offset += defs["MAGIC_SIZE"]
        elif name == "OFF_RECORDS":
            assert ctype == "record[capacity]"
        else:
            expected_offset += TYPE_SIZES[ctype]
    assert set(seen) == {n for n in defs if n.startswith("OFF_")}
    field_of = {DOC_FIELDS[w]: f for _, _, f in rows for w in DOC_FIELDS if f.startswith(w)}
    assert f"({defs['VERSION']})" in field_of["OFF_VERSION"]
    assert f"({RECORD_SIZE})" in field_of["OFF_RECORD_SIZE"]


# -- the C reader (mux.sim._simfast) --------------------------------------------------------------


def rec(domid, *, reason=None):
    return DomainRecord(domid, make_flags(shutdown_reason=reason), bytes(14) + bytes([1, domid]))


def make_shm(records, capacity=None, magic=b"XMUXSHM1", record_size=RECORD_SIZE, seq=0):
    """A table as the sim writes it, in a plain buffer (8-byte aligned, as a bytearray is)."""
    capacity = len(records) if capacity is None else capacity
    buf = bytearray(shm.file_size(capacity))
    buf[shm.SHM_OFF_MAGIC : shm.SHM_OFF_MAGIC + len(magic)] = magic
    for offset, fmt, value in [
        (shm.SHM_OFF_VERSION, "<I", shm.SHM_VERSION),
        (shm.SHM_OFF_RECORD_SIZE, "<I", record_size),
        (shm.SHM_OFF_CAPACITY, "<I", capacity),
        (shm.SHM_OFF_COUNT, "<I", len(records)),
        (shm.SHM_OFF_SEQLOCK, "<Q", seq),
        (shm.SHM_OFF_CHANGE_STAMP, "<Q", 123456789),
        (shm.SHM_OFF_CHANGES, "<Q", 3),
        (shm.SHM_OFF_VIRQS, "<Q", 2),
    ]:
        struct.pack_into(fmt, buf, offset, value)
    for i, r in enumerate(records):
        r.pack_into(buf, shm.SHM_OFF_RECORDS + i * RECORD_SIZE)
    return buf


def decode(out, n):
    return [struct.unpack_from("<H", out, i * RECORD_SIZE)[0] for i in range(n)]


def test_shm_getinfolist_semantics():
    table = make_shm([rec(d) for d in (0, 2, 5, 9)], capacity=6)
    out = bytearray(4 * RECORD_SIZE)
    assert _simfast.shm_getinfolist(table, 0, 4, out) == 4 and decode(out, 4) == [0, 2, 5, 9]
    assert _simfast.shm_getinfolist(table, 3, 4, out) == 2 and decode(out, 2) == [5, 9]
    assert _simfast.shm_getinfolist(table, 5, 1, out) == 1 and decode(out, 1) == [5]
    assert _simfast.shm_getinfolist(table, 10, 4, out) == 0
    assert _simfast.shm_getinfolist(table, 1 << 20, 4, out) == 0
    assert _simfast.shm_getinfolist(table, 0, 0, out) == 0
    assert bytes(out[:RECORD_SIZE]) == rec(5).pack()
    assert _simfast.shm_change_stamp(table) == 123456789
    # Straight into a scan.
    n = _simfast.shm_getinfolist(table, 0, 4, out)
    scanner = _fast.DomainTable()
    assert [(e.kind, e.domid) for e in scanner.diff(out, n)] == [("new", d) for d in (0, 2, 5, 9)]


@pytest.mark.parametrize(
    ("table", "out", "message"),
    [
        (make_shm([rec(1)], magic=b"NOTMUX!!"), bytearray(RECORD_SIZE), "magic"),
        (make_shm([rec(1)], record_size=104), bytearray(RECORD_SIZE), "record size 104"),
        (make_shm([rec(1)])[:100], bytearray(RECORD_SIZE), "too small"),
        (make_shm([rec(1)], capacity=4)[:300], bytearray(RECORD_SIZE), "claims 4 records"),
        (make_shm([rec(1)]), bytearray(RECORD_SIZE - 1), "out holds 111 bytes"),
    ],
)
def test_shm_getinfolist_rejects(table, out, message):
    with pytest.raises(ValueError, match=message):
        _simfast.shm_getinfolist(table, 0, 1, out)


def test_shm_getinfolist_waits_for_the_writer():
    table = make_shm([rec(1), rec(2)], seq=7)  # odd: a change is under way
    out = bytearray(2 * RECORD_SIZE)

    def finish():
        time.sleep(0.05)
        rec(2, reason=SHUTDOWN_SUSPEND).pack_into(table, shm.SHM_OFF_RECORDS + RECORD_SIZE)
        struct.pack_into("<Q", table, shm.SHM_OFF_SEQLOCK, 8)

    writer = threading.Thread(target=finish)
    writer.start()
    try:
        start = time.monotonic()
        assert _simfast.shm_getinfolist(table, 0, 2, out) == 2  # releases the GIL while it waits
        assert time.monotonic() - start >= 0.04
    finally:
        writer.join()
    assert bytes(out[RECORD_SIZE:]) == rec(2, reason=SHUTDOWN_SUSPEND).pack()


def test_shm_getinfolist_gives_up_on_a_stuck_writer():
    table = make_shm([rec(1)], seq=1)
    with pytest.raises(TimeoutError):
        _simfast.shm_getinfolist(table, 0, 1, bytearray(RECORD_SIZE))


def test_the_sim_writer_and_the_c_reader_agree(tmp_path):
    """The sim's Python writer (shm.py) and the C reader take the layout from one place."""
    table = ShmTable(str(tmp_path / "domains.shm"), capacity=8)
    try:
        table.begin()
        table.rewrite([rec(0), rec(3), rec(4, reason=SHUTDOWN_SUSPEND)])
        stamp = table.end()
        with open(table.path, "rb") as f:
            raw = bytearray(f.read())
        out = bytearray(8 * RECORD_SIZE)
        assert _simfast.shm_getinfolist(raw, 1, 8, out) == 2
        expected = rec(3).pack() + rec(4, reason=SHUTDOWN_SUSPEND).pack()
        assert bytes(out[: 2 * RECORD_SIZE]) == expected
        assert _simfast.shm_change_stamp(raw) == stamp
    finally:
        table.close()
