"""The read-error campaign at a few fault points, and the defects it found.

The cases are ``hw_sim.campaign_readerrors`` cases: the real agent docked on simulated
hardware, its store on the power-loss FUSE disk failing the Nth read while it syncs to
the dock share. Where ``/dev/fuse`` is missing these fail and say so.
"""
from __future__ import annotations

import errno
import logging
import os

import pytest

from hw_sim.powercut import PowerCutDisk, fuse_available


@pytest.fixture(scope="module")
def campaign(tmp_path_factory):
    from hw_sim import campaign_readerrors as c
    reason = fuse_available()
    if reason:
        pytest.fail(f"power-loss filesystem unavailable: {reason}")
    logging.disable(logging.CRITICAL)
    try:
        env = c.prepare(tmp_path_factory.mktemp("readerr"))
        yield c, env, c.count_reads(env)
    finally:
        logging.disable(logging.NOTSET)


def test_reads_reach_the_disk_so_the_campaign_can_see_them(campaign):
    c, env, count = campaign
    assert count > 0, "reads never reached the disk: the campaign would prove nothing"
    assert c.prove_reads_reach_disk(env) == {"reread": "EIO", "fresh": "EIO"}


def test_a_campaign_that_sees_no_read_refuses_to_plan():
    from hw_sim.campaign_readerrors import ReadsNeverReachedDisk, plan
    with pytest.raises(ReadsNeverReachedDisk, match="never reached the disk"):
        plan(0, 40)
    specs, sampled = plan(100, 10, ("sticky",))
    assert len(specs) == 10 and specs[0].n == 1 and specs[-1].n == 100
    assert sampled == {"read/sticky": "10 of 100"}


@pytest.mark.parametrize("mode", ["sticky", "once"])
def test_first_middle_and_last_read_faults_keep_every_promise(campaign, mode):
    c, env, count = campaign
    for n in sorted({1, max(1, count // 2), count}):
        res = c.run_case(env, c.CaseSpec(n, mode))
        assert res["outcome"] != "failed", res
        assert res["exits"] == 0 and res["fired"], res


def test_a_sealed_file_that_cannot_be_read_is_never_released_and_the_agent_stays_up(campaign):
    """The spec that found it (then ``{"n": 15, "mode": "sticky"}``; read numbers moved
    when -shm reads stopped being faulted): the OSError of reading a segment escaped the
    sync engine and took the agent down, and the restarted agent, powered on in its dock
    with the card failing, could not open its store and never synced once it could.
    Now the round ends as a sync fault on the dock, audited, and the next dock finishes."""
    c, env, count = campaign
    res = c.run_case(env, c.CaseSpec(max(2, count // 2), "sticky"))
    assert res["outcome"] == "held_then_released", res
    assert res["exits"] == 0 and res["dock_indication"] == "sync_fault", res
    assert "sync_local_storage" in res["fault_audit"], res
    assert len(res["released_in_fault"]) < 2 and res["sync_after"] == ["complete"], res


def test_a_store_that_opens_late_in_the_dock_is_synced_without_a_redock(campaign, tmp_path):
    """A camera powered on in its dock while every read of its card fails comes up
    without a store (no store: no sync); when the card answers again the store opens on
    the next retry — and the dock's sync must start then, not at the next undock/dock."""
    c, env, _ = campaign
    d, work, backing = c._case_dirs(env, "late-open")
    with PowerCutDisk(backing, work / "store", seed=1) as disk:
        disk.fail_nth("read", 1, "EIO")
        drv = c.DockDriver(work, d / "acks.jsonl")
        drv.docked = True
        assert drv.power_on()
        assert drv.rig.agent._store is None and not drv.exits
        drv.advance_to(1.0)
        disk.clear_faults()
        drv.advance_to(7.0)  # the store is tried again 5 s after power-on
        assert drv.rig.agent._store is not None
        assert [r.status for r in drv.reports] == ["complete"], drv.exits
        assert sorted(drv.reports[0].released) == sorted(env.clips)
        drv.rig.close()


def test_reads_of_sqlite_shared_memory_are_not_faulted(tmp_path):
    """SQLite's -shm wal-index is mapped shared memory a card never reads back; under
    FUSE an injected EIO there would be a SIGBUS in SQLite (the campaign's sticky cases
    2-9 died of it), a fault no card can cause. The model's doc says scratch files are
    never faulted; reads now follow it, every other file's reads still fail."""
    reason = fuse_available()
    if reason:
        pytest.fail(f"power-loss filesystem unavailable: {reason}")
    backing = tmp_path / "backing"
    backing.mkdir()
    (backing / "db-shm").write_bytes(b"s" * 8192)
    (backing / "data").write_bytes(b"d" * 8192)
    with PowerCutDisk(backing, tmp_path / "mnt") as disk:
        disk.fail_nth("read", 1, "EIO")
        assert (tmp_path / "mnt" / "db-shm").read_bytes() == b"s" * 8192
        with pytest.raises(OSError) as err:
            (tmp_path / "mnt" / "data").read_bytes()
        assert err.value.errno == errno.EIO
        disk.clear_faults()
        assert (tmp_path / "mnt" / "data").read_bytes() == b"d" * 8192
    assert os.listdir(backing) and not (tmp_path / "mnt" / "data").exists()
