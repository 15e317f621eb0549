"""Storage faults: EIO/ENOSPC never crash the agent; they raise the fault alarm, keep
what must happen for later, and clear when storage works again.

The agent-level tests run the I/O-error campaign's own cases (``hw_sim.campaign_ioerrors``:
the real agent, its store on the power-loss FUSE disk failing the Nth operation) at a few
fault points — first, middle and last of each kind — and once with the guard taken out,
to prove the campaign sees a crashing agent. Where ``/dev/fuse`` is missing they fail
and say so.
"""
from __future__ import annotations

import errno
import logging

import pytest

from firmware.storage_fault import StorageGuard, must_happen, without_store
from hw_sim.clock import SimClock


def guard(available=lambda: True):
    reports = []
    g = StorageGuard(lambda kind, data: reports.append((kind, data)), available, SimClock())
    return g, reports


def eio():
    raise OSError(errno.EIO, "Input/output error")


def test_a_storage_error_is_reported_once_per_episode_and_never_raised():
    g, reports = guard()
    g.run(eio)
    g.run(eio)
    assert [k for k, _ in reports] == ["storage_error"]
    assert g.failing and g.failed_ops == 2
    g.succeeded()
    assert [k for k, _ in reports] == ["storage_error", "storage_ok"]
    assert reports[1][1]["failed_ops"] == 2 and not g.failing


def test_other_errors_are_not_swallowed():
    g, _ = guard()
    with pytest.raises(ZeroDivisionError):
        g.run(lambda: 1 / 0)


def test_kept_operations_run_in_order_before_the_next_one_and_stop_at_a_failure():
    g, _ = guard()
    done, broken = [], {"on": True}

    def op(name):
        def fn():
            if broken["on"]:
                g.retry_later(name, fn)
                eio()
            done.append(name)
        return fn
    g.run(op("open:A"))
    g.run(op("close:A"))
    assert g.pending() == ["open:A", "close:A"]
    g.run(lambda: done.append("segment"))  # retries first: still failing, order kept
    assert g.pending() == ["open:A", "close:A"] and done == ["segment"]
    broken["on"] = False
    g.run(lambda: done.append("next"))
    assert done == ["segment", "open:A", "close:A", "next"] and g.pending() == []


def test_the_newest_request_under_a_key_wins():
    g, _ = guard()
    seen = []
    g.retry_later("mark", lambda: seen.append("clear"))
    g.retry_later("open:B", lambda: seen.append("open B"))
    g.retry_later("mark", lambda: seen.append("clear again"))
    g.run(lambda: None)
    assert seen == ["open B", "clear again"]


def test_without_a_store_must_happen_ops_are_kept_and_others_skipped():
    state = {"store": False}
    g, _ = guard(lambda: state["store"])
    seen = []
    g.run(must_happen("open:C", lambda: seen.append("open C")))
    g.run(lambda: seen.append("audit"))
    g.run(without_store(lambda: seen.append("reopen")))
    assert seen == ["reopen"] and g.pending() == ["open:C"] and g.skipped_ops == 2
    state["store"] = True
    g.run(lambda: seen.append("segment"))
    assert seen == ["reopen", "open C", "segment"]


# ------------------------------------------------------- the agent on a failing disk
@pytest.fixture(scope="module")
def campaign(tmp_path_factory):
    from hw_sim import campaign_ioerrors as c
    from hw_sim.powercut import fuse_available
    reason = fuse_available()
    if reason:
        pytest.fail(f"power-loss filesystem unavailable: {reason}")
    logging.disable(logging.CRITICAL)
    try:
        env = c.prepare(tmp_path_factory.mktemp("ioerr"))
        yield c, env, c.count_ops(env)
    finally:
        logging.disable(logging.NOTSET)


def points(counts, kind):
    n = counts[kind]
    return sorted({1, max(1, n // 2), n})


@pytest.mark.parametrize("kind,err", [("write", "ENOSPC"), ("fsync", "EIO"), ("rename", "EIO"),
                                      ("create", "ENOSPC"), ("fsyncdir", "EIO"), ("link", "EIO"),
                                      ("unlink", "ENOSPC")])
def test_sticky_faults_at_first_middle_and_last_op_keep_every_promise(campaign, kind, err):
    c, env, counts = campaign
    for n in points(counts, kind):
        res = c.run_case(env, c.CaseSpec(kind, n, err, "sticky"))
        assert res["outcome"] != "failed", res
        assert res["fired"] and res["exits"] == 0, res


@pytest.mark.parametrize("spec", [
    # Campaign findings, kept as the specs that found them (the workload's op numbering
    # can drift as the code changes; the store-level tests in tests/buffer/test_io_errors.py
    # pin the same defects exactly):
    ("write", 66, "EIO", "sticky"),        # index row failed after the rename: stale ring file
    ("fsyncdir", 3, "ENOSPC", "sticky"),   # ring dir fsync failed after the rename: the same
    ("unlink", 3, "ENOSPC", "sticky"),     # promotion cut after the links: window never pinned
    ("link", 2, "EIO", "sticky"),
])
def test_campaign_findings_stay_fixed(campaign, spec):
    c, env, _ = campaign
    res = c.run_case(env, c.CaseSpec(*spec))
    assert res["outcome"] != "failed", res


def test_a_fault_while_the_store_opens_brings_the_camera_up_alarmed(campaign):
    """The 5th write is inside the store's opening (recovery, power-on audit): the agent
    comes up without a store, alarmed, keeps trying, and records once it opens."""
    c, env, _ = campaign
    res = c.run_case(env, c.CaseSpec("write", 5, "ENOSPC", "sticky"))
    assert res["outcome"] == "alarmed_recovered", res
    assert res["stored_in_clip_after_clear"] >= 1


@pytest.mark.parametrize("kind", ["write", "fsync", "create"])
def test_a_one_off_fault_is_felt_once_and_recording_goes_on(campaign, kind):
    c, env, counts = campaign
    res = c.run_case(env, c.CaseSpec(kind, max(1, counts[kind] // 2), "EIO", "once"))
    # (a failed piece of a write the kernel split is absorbed by the caller's retry of
    # the short write: no error reaches the agent, nothing to alarm about)
    assert res["outcome"] in ("alarmed_recovered", "absorbed"), res


def test_the_campaign_catches_an_agent_that_lets_io_errors_escape(campaign, monkeypatch):
    """The agent as it was before the guard (errors propagate; a store that fails to
    open fails the start): every restart meets the still-failing disk again, and the
    campaign must call that a crash loop."""
    from firmware import storage_fault
    from firmware.agent import Agent
    c, env, _ = campaign

    def unguarded(self, fn):
        fn()

    def open_or_raise(self):
        real_failed = self.storage.failed
        self.storage.failed = lambda exc: (_ for _ in ()).throw(exc)  # re-raise
        try:
            return real_open(self)
        finally:
            self.storage.failed = real_failed
    real_open = Agent._open_store
    monkeypatch.setattr(storage_fault.StorageGuard, "run", unguarded)
    monkeypatch.setattr(Agent, "_open_store", open_or_raise)
    res = c.run_case(env, c.CaseSpec("fsync", 20, "EIO", "sticky"))
    assert res["outcome"] == "failed"
    assert any("crash loop" in p for p in res["problems"]), res
