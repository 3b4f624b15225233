"""Compact JSON for what the bridge publishes (events, the bucket's rows), made cheaply.

`json.dumps(obj, separators=...)` builds an encoder, and the C encoder under it, on every
call: more than half of its time for an event. The C encoder is made once here, with
exactly the arguments json.dumps gives it (no circular check: events and rows are flat),
and json.dumps is the fallback where the C accelerator is missing.
"""

from __future__ import annotations

import json
from json.encoder import c_make_encoder, encode_basestring_ascii

_SEPARATORS = (",", ":")

_c_encode = (
    None
    if c_make_encoder is None
    else c_make_encoder(None, None, encode_basestring_ascii, None, ":", ",", False, False, True)
)


def compact(obj: dict) -> str:
    """`json.dumps(obj, separators=(",", ":"))`, the same text."""
    if _c_encode is None:  # pragma: no cover - CPython has the C accelerator
        return json.dumps(obj, separators=_SEPARATORS)
    return "".join(_c_encode(obj, 0))
