"""`xenmux stats`: the daemon's counters, for people without Prometheus."""

from __future__ import annotations

import argparse
import sys

from mux.cli import add_socket_argument
from mux.commands.output import JSON, TABLE, add_output_arguments, emit, table
from mux.commands.reach import add_request_timeout, ask_once
from mux.protocol import TRIGGER_DEPTH, TRIGGER_WATCH


def configure(p: argparse.ArgumentParser) -> None:
    add_output_arguments(p, TABLE, alias="--json")
    add_request_timeout(p)
    add_socket_argument(p)


def _us(v) -> str:
    if v is None:
        return "-"
    if v == "+Inf":
        return "above the largest bucket"
    return f"<= {v * 1e6:.3g} us" if v < 1e-3 else f"<= {v * 1e3:.3g} ms"


def run(args: argparse.Namespace) -> int:
    s = ask_once(args.socket, args.timeout, lambda c: c.stats())
    if args.output == JSON:
        emit(s)
        return 0
    firings = sum(s["firings"].values())
    # Coalescing as the dashboard shows it: firings per scan that a firing caused.
    scans = s["scans"].get(TRIGGER_WATCH, 0) + s["scans"].get(TRIGGER_DEPTH, 0)
    rows = [
        ("uptime", f"{s['uptime_seconds']:.0f} s"),
        (
            "backend / xenstored",
            f"{s['backend']} / {s['xenstored']}"
            f" ({'connected' if s['xenstore_connected'] else 'NOT connected'})",
        ),
        ("watch depth (Xen 4.22)", "yes" if s["features"]["watch_depth"] else "no"),
        ("domains", ", ".join(f"{k} {v}" for k, v in s["domains"].items())),
        ("firings", ", ".join(f"{k} {v}" for k, v in s["firings"].items())),
        ("scans", ", ".join(f"{k} {v}" for k, v in s["scans"].items() if v) or "0"),
        (
            "one-domid queries / records scanned",
            f"{s.get('targeted_scans', 0)} / {s.get('scanned_domains', 0)}",
        ),
        (
            "coalescing",
            f"{firings} firings -> {scans} scans they caused"
            + (f" ({firings / scans:.1f} per scan)" if scans else ""),
        ),
        ("events", ", ".join(f"{k} {v}" for k, v in s["events"].items())),
        ("frames sent", s["frames_sent"]),
        ("subscribers / clients", f"{s['subscribers']} / {s['clients']}"),
        ("client connections accepted", s.get("clients_total", 0)),
        ("overflows", s["overflows"]),
        ("client errors", ", ".join(f"{k} {v}" for k, v in s["client_errors"].items()) or "0"),
        ("xenstore reconnects", s["xenstore_reconnects"]),
        ("hypercall errors", s["hypercall_errors"]),
        (
            "scan p50 / p99",
            f"{_us(s['scan_seconds']['p50_le'])} / {_us(s['scan_seconds']['p99_le'])}",
        ),
        (
            "hypercall p50 / p99",
            f"{_us(s['hypercall_seconds']['p50_le'])} / {_us(s['hypercall_seconds']['p99_le'])}",
        ),
        (
            "firing->frame p50 / p99",
            f"{_us(s['notify_seconds']['p50_le'])} / {_us(s['notify_seconds']['p99_le'])}",
        ),
    ]
    table(("COUNTER", "VALUE"), rows, out=sys.stdout)
    return 0
