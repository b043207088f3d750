"""The PostgreSQL backend's fast failure during an outage: one wait, then no more until a probe may try."""

from gateway_project.postgresql import base


def test_after_a_failure_attempts_fail_at_once_then_one_probe_at_a_time(monkeypatch):
    now = [100.0]
    monkeypatch.setattr(base.time, "monotonic", lambda: now[0])
    outage = base.Outage()
    assert outage.admit() and outage.admit()  # healthy: everyone tries

    outage.failed()
    assert not outage.admit()
    now[0] += base.FAST_FAIL_SECONDS
    assert outage.admit()  # the probe
    assert not outage.admit()  # the others, while it tries
    outage.failed()
    now[0] += base.FAST_FAIL_SECONDS
    assert outage.admit()
    outage.recovered()
    assert outage.admit() and outage.admit()


def test_a_probe_that_never_reports_back_does_not_block_the_others_for_ever(monkeypatch):
    now = [0.0]
    monkeypatch.setattr(base.time, "monotonic", lambda: now[0])
    outage = base.Outage()
    outage.failed()
    now[0] += base.FAST_FAIL_SECONDS
    assert outage.admit()
    now[0] += base.PROBE_SECONDS
    assert outage.admit()
