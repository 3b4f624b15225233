"""The one line a person reads after a chaos run (docs/chaos.md explains each figure)."""

from __future__ import annotations

from mux.chaos.streams import SUBSCRIBER_KINDS


def _counts(counts: dict) -> str:
    return " ".join(f"{k}={v}" for k, v in sorted(counts.items())) or "none"


def summary_line(f: dict) -> str:
    n = f["violations"]
    verdict = f"{n} violations" + (f" ({_counts(f['violations_by_kind'])})" if n else "")
    inc = f["incarnations"]
    deaths = ", ".join(
        "{kind} {expected}/{once}/{lost}/{duplicated}".format(kind=kind, **f["deaths"][kind])
        for kind in SUBSCRIBER_KINDS
    )
    wrong = sum(f["deaths"][k]["wrong_reason"] for k in SUBSCRIBER_KINDS)
    missed = sum(f["deaths"][k]["missed"] for k in SUBSCRIBER_KINDS)
    ping = f["ping"]
    flood_ping = ping.get("worst_during_floods_ms")
    worst = ping.get("worst_ms")
    return (
        f"xenmux chaos: {verdict} in {f['seconds']:g} s at {f['domains']} domains "
        f"(seed {f['seed']}); faults {_counts(f['faults'])}; "
        f"{f['events_checked']} events checked; "
        f"incarnations {sum(inc.values())} (observable {inc.get('observable', 0)}, "
        f"unobservable {inc.get('unobservable', 0)}, "
        f"indistinguishable {inc.get('indistinguishable', 0)}); "
        f"deaths expected/once/lost/duplicated {deaths}; wrong reasons {wrong}; "
        f"missed {missed}; gaps {f['gaps']}; replayed {f['replayed']}; late {f['late']}; "
        f"daemon peak RSS {f['daemon']['peak_rss_mb']} MB; "
        f"worst ping {_ms(flood_ping)} during floods ({_ms(worst)} outside faults)"
    )


def _ms(value) -> str:
    return "n/a" if value is None else f"{value:g} ms"


def example_lines(f: dict) -> list[str]:
    """A few violations of each kind, one line each, for the person to start from."""
    out = []
    for v in f.get("violation_examples", []):
        where = " ".join(f"{k} {v[k]}" for k in ("domid", "inc") if v.get(k) is not None)
        out.append(
            f"  {v['kind']}: {v['subscriber']}: {v['detail']}" + (f" ({where})" if where else "")
        )
    return out
