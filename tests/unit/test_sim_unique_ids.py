"""The simulated hypervisor's unique ids (issue 17 item 1, docs/xen-versions.md): from Xen
4.20 on every create draws one, even for the same domid and UUID; they sit beside the
records (whose bytes stay the real xc_domaininfo_t's) and go with the record's seqlock
section; the sim backend hands them out from 4.21 on only."""

from __future__ import annotations

import dataclasses
import os
import random
import uuid

import pytest

from mux.records import DOMID_FIRST_RESERVED, RECORD_SIZE, DomainRecord
from mux.sim.backend import SimBackend
from mux.sim.host import Hypervisor, SimHost
from mux.sim.paths import sim_paths
from mux.sim.shm import ShmReader, ShmTable, file_size
from mux.sim.toolstack import LocalToolstack
from mux.sim.xenstored import Xenstored


def host(directory, version: str) -> tuple[ShmTable, SimHost]:
    shm = ShmTable(sim_paths(directory).shm, xen_version=version)
    hv = Hypervisor(shm, rng=random.Random(7))
    return shm, SimHost(hv, LocalToolstack(Xenstored(hv)))


@pytest.mark.parametrize("version", ["4.20", "4.21", "4.22"])
def test_every_create_draws_an_id_that_goes_with_its_record(tmp_path, version):
    shm, sim = host(tmp_path, version)
    try:
        u = str(uuid.uuid4())
        (first,) = sim.create(domid=5, uuid=u)
        with ShmReader(shm.path) as reader:
            ids = reader.unique_ids
            assert ids.present and ids.readable is (version != "4.20")
            assert ids.get(5) == first.unique_id != 0
            assert ids.get(0) == sim.hv.domains[0].unique_id != 0  # dom0's, from boot
            sim.destroy(5)
            assert ids.get(5) is None  # gone with its record, in its section
            (again,) = sim.create(domid=5, uuid=u)  # the same domid and UUID: another id
            assert ids.get(5) == again.unique_id not in (0, first.unique_id)
            assert sim.get(5).as_dict()["unique_id"] == f"{again.unique_id:016x}"
            many = sim.create(count=40)  # the batch path (one rewrite of the table)
            assert [ids.get(d.domid) for d in many] == [d.unique_id for d in many]
            assert len({d.unique_id for d in many}) == 40
            assert ids.get(DOMID_FIRST_RESERVED) is None
    finally:
        shm.close()
    assert not os.path.exists(shm.path)


def test_the_records_stay_the_real_ones_and_4_17_has_no_ids(tmp_path):
    tables = {}
    for version in ("4.17", "4.21"):
        (tmp_path / version).mkdir()
        shm, sim = host(tmp_path / version, version)
        try:
            sim.create(domid=3, uuid="1b4e28ba-2fa1-11d2-883f-0016d3cca427")
            with ShmReader(shm.path) as reader:
                snap = reader.snapshot()
                assert snap.records[RECORD_SIZE:][:2] == (3).to_bytes(2, "little")
                recs = [DomainRecord.unpack_from(snap.records, i * RECORD_SIZE) for i in range(2)]
                # cpu_time aside: the ids take draws of the host's generator
                same = [dataclasses.replace(r, cpu_time=0).pack() for r in recs]
                tables[version] = (same, os.path.getsize(shm.path))
                present = reader.unique_ids.present
                assert present is (version == "4.21")
                if not present:
                    with pytest.raises(LookupError):
                        reader.unique_ids.get(3)
        finally:
            shm.close()
    # The same seed, the same domains: the same 112-byte records; the ids are extra.
    assert tables["4.17"][0] == tables["4.21"][0]
    assert tables["4.17"][1] == file_size(shm.capacity)
    assert tables["4.21"][1] == file_size(shm.capacity, True)


@pytest.mark.parametrize(("version", "offered"), [("4.17", False), ("4.20", False), ("4.21", True)])
def test_the_sim_backend_offers_them_from_4_21(tmp_path, version, offered):
    shm, sim = host(tmp_path, version)
    try:
        (dom,) = sim.create(domid=2)
        backend = SimBackend(str(tmp_path))
        try:
            assert backend.capabilities.unique_ids is offered
            assert backend.capabilities.features()["unique_ids"] is offered
            if offered:
                assert backend.unique_id(2) == dom.unique_id
                assert backend.unique_id(9) is None
            else:
                with pytest.raises(NotImplementedError):
                    backend.unique_id(2)
        finally:
            backend.close()
    finally:
        shm.close()
