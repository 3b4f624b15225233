"""What the sim's xenstored counts, shown by `sim-ctl info` and in control replies."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Counters:
    release_firings: int = 0  # @releaseDomain fired without a domid
    release_dom_firings: int = 0  # @releaseDomain/<domid> fired (4.22)
    introduce_firings: int = 0
    events: int = 0  # watch events written
    virqs: int = 0  # domain passes run
    dropped_connections: int = 0

    def as_dict(self) -> dict[str, int]:
        return {
            "release_firings": self.release_firings,
            "release_dom_firings": self.release_dom_firings,
            "introduce_firings": self.introduce_firings,
            "events": self.events,
            "virqs": self.virqs,
            "dropped_connections": self.dropped_connections,
        }
