"""The scanner twins' fixture: a test that takes `impl` runs on mux._fast and mux.reference."""

from __future__ import annotations

import pytest
from scannerhelpers import IMPLS


@pytest.fixture(params=IMPLS)
def impl(request):
    return request.param
