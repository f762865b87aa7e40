"""train.patience: the early-stop rule counted by hand."""

from tbjax.run.patience import Patience


def test_a_member_stops_after_patience_evaluations_without_a_new_best():
    p = Patience(2, 2)
    assert p.record(0, True) is False and p.record(1, True) is False
    assert p.record(0, False) is False and not p.stopped(0)
    assert p.record(0, False) is True and p.stopped(0)   # the second stale evaluation stops it, once
    assert p.record(0, False) is False and p.stopped(0)
    assert p.n_stopped() == 1 and not p.all_stopped() and p.all_stopped(excluded={1})
    p.record(1, False), p.record(1, False)
    assert p.all_stopped()
    again = Patience(2, 2)
    again.restore(p.meta())
    assert again.since_best == p.since_best and again.all_stopped()


def test_zero_patience_never_stops():
    p = Patience(1, 0)
    for _ in range(50):
        p.record(0, False)
    assert not p.stopped(0) and not p.all_stopped()
