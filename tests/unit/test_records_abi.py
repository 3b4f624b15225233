"""records.py against Debian's real xenctrl.h, and the C side's header against records.py:
sizes, offsets and constants must agree."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from mux import _fast, records

HEADER = "/usr/include/xenctrl.h"
RECORD_H = Path(__file__).resolve().parents[2] / "mux" / "fastcore" / "xm_record.h"

PROGRAM = r"""
#include <stddef.h>
#include <stdio.h>
#include <xenctrl.h>
#include <xen/sched.h>

#define OFF(f) printf("off_" #f " %zu\n", offsetof(xc_domaininfo_t, f))
int main(void) {
    printf("size %zu\n", sizeof(xc_domaininfo_t));
    OFF(domain); OFF(flags); OFF(tot_pages); OFF(max_pages); OFF(shr_pages);
    OFF(cpu_time); OFF(nr_online_vcpus); OFF(handle); OFF(cpupool);
    printf("handle_size %zu\n", sizeof(((xc_domaininfo_t *)0)->handle));
    printf("dying %u\n", XEN_DOMINF_dying);
    printf("hvm_guest %u\n", XEN_DOMINF_hvm_guest);
    printf("shutdown %u\n", XEN_DOMINF_shutdown);
    printf("paused %u\n", XEN_DOMINF_paused);
    printf("blocked %u\n", XEN_DOMINF_blocked);
    printf("running %u\n", XEN_DOMINF_running);
    printf("debugged %u\n", XEN_DOMINF_debugged);
    printf("xs_domain %u\n", XEN_DOMINF_xs_domain);
    printf("hap %u\n", XEN_DOMINF_hap);
    printf("shutdownmask %u\n", XEN_DOMINF_shutdownmask);
    printf("shutdownshift %u\n", XEN_DOMINF_shutdownshift);
    printf("poweroff %u\n", SHUTDOWN_poweroff);
    printf("reboot %u\n", SHUTDOWN_reboot);
    printf("suspend %u\n", SHUTDOWN_suspend);
    printf("crash %u\n", SHUTDOWN_crash);
    printf("watchdog %u\n", SHUTDOWN_watchdog);
    printf("soft_reset %u\n", SHUTDOWN_soft_reset);
    printf("first_reserved %u\n", (unsigned)DOMID_FIRST_RESERVED);
    return 0;
}
"""


@pytest.fixture(scope="module")
def from_header(tmp_path_factory) -> dict[str, int]:
    if not os.path.exists(HEADER):
        pytest.fail(f"{HEADER} is missing: install libxen-dev (make test does)")
    cc = shutil.which("cc") or shutil.which("gcc")
    assert cc, "no C compiler: install gcc"
    work = tmp_path_factory.mktemp("abi")
    src = work / "abi.c"
    src.write_text(PROGRAM)
    exe = work / "abi"
    subprocess.run([cc, "-o", str(exe), str(src)], check=True)
    out = subprocess.run([str(exe)], check=True, capture_output=True, text=True).stdout
    return {k: int(v) for k, v in (line.split() for line in out.splitlines())}


def test_record_size(from_header):
    assert from_header["size"] == records.RECORD_SIZE


@pytest.mark.parametrize(
    "field,ours",
    [
        ("domain", records.OFF_DOMAIN),
        ("flags", records.OFF_FLAGS),
        ("tot_pages", records.OFF_TOT_PAGES),
        ("max_pages", records.OFF_MAX_PAGES),
        ("shr_pages", records.OFF_SHR_PAGES),
        ("cpu_time", records.OFF_CPU_TIME),
        ("nr_online_vcpus", records.OFF_NR_ONLINE_VCPUS),
        ("handle", records.OFF_HANDLE),
        ("cpupool", records.OFF_CPUPOOL),
    ],
)
def test_field_offsets(from_header, field, ours):
    assert ours == from_header[f"off_{field}"], field


def test_flag_bits(from_header):
    assert from_header["dying"] == records.DOMINF_DYING
    assert from_header["hvm_guest"] == records.DOMINF_HVM_GUEST
    assert from_header["shutdown"] == records.DOMINF_SHUTDOWN
    assert from_header["paused"] == records.DOMINF_PAUSED
    assert from_header["blocked"] == records.DOMINF_BLOCKED
    assert from_header["running"] == records.DOMINF_RUNNING
    assert from_header["debugged"] == records.DOMINF_DEBUGGED
    assert from_header["xs_domain"] == records.DOMINF_XS_DOMAIN
    assert from_header["hap"] == records.DOMINF_HAP
    assert from_header["shutdownmask"] == records.DOMINF_SHUTDOWNMASK
    assert from_header["shutdownshift"] == records.DOMINF_SHUTDOWNSHIFT
    assert from_header["handle_size"] == records.HANDLE_SIZE


def test_shutdown_reasons(from_header):
    for name, code in records.REASON_CODES.items():
        assert code == from_header[name], name
    assert from_header["first_reserved"] == records.DOMID_FIRST_RESERVED


def test_pack_places_fields_where_the_header_says(from_header):
    handle = bytes(range(16))
    rec = records.DomainRecord(
        domid=0x1234,
        flags=0xAABBCCDD,
        handle=handle,
        cpu_time=0x1122334455667788,
        tot_pages=7,
        max_pages=8,
        shr_pages=9,
        nr_online_vcpus=3,
        cpupool=5,
    )
    raw = rec.pack()
    assert len(raw) == from_header["size"]
    assert int.from_bytes(raw[from_header["off_domain"] :][:2], "little") == 0x1234
    assert int.from_bytes(raw[from_header["off_flags"] :][:4], "little") == 0xAABBCCDD
    assert int.from_bytes(raw[from_header["off_cpu_time"] :][:8], "little") == 0x1122334455667788
    assert raw[from_header["off_handle"] :][:16] == handle
    assert int.from_bytes(raw[from_header["off_cpupool"] :][:4], "little") == 5
    assert records.DomainRecord.unpack_from(raw) == rec


def test_c_record_header_is_records_py():
    """Every number of mux/fastcore/xm_record.h is records.py's, and every one is in the list
    the extensions' import guard walks (a number left out of it would go unchecked)."""
    defines = {
        name: int(value, 0)
        for name, value in re.findall(
            r"^#define XM_(\w+)[ \t]+(0x[0-9a-fA-F]+|\d+)\b", RECORD_H.read_text(), re.MULTILINE
        )
    }
    assert len(defines) == 15
    for name, value in defines.items():
        assert getattr(records, name) == value, name
    assert _fast._record_layout() == defines
