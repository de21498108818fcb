import pytest

from sparsetrain.schedules import SparsitySchedule, to_step


def test_cubic_hits_target_exactly_at_end_even_off_period():
    s = SparsitySchedule("cubic", 0.9, begin_step=0, end_step=1003, update_every=100)
    events = [t for t in range(1200) if s.is_event(t)]
    assert events[-1] == 1003  # end is always an event, though not a multiple of the period
    assert events[:3] == [0, 100, 200]
    assert s.sparsity_at(1003) == pytest.approx(0.9)
    assert s.sparsity_at(1002) < 0.9  # one step earlier the target is not reached yet
    values = [s.sparsity_at(t) for t in events]
    assert values == sorted(values)


def test_cubic_formula_matches_zhu_gupta():
    s = SparsitySchedule("cubic", 0.8, begin_step=100, end_step=500, update_every=100, initial=0.2)
    # s_t = s_f + (s_i - s_f)(1 - progress)^3, progress = (t - t0)/(te - t0)
    assert s.sparsity_at(300) == pytest.approx(0.8 + (0.2 - 0.8) * 0.5**3)
    assert s.sparsity_at(99) == pytest.approx(0.2)
    assert s.sparsity_at(350) == s.sparsity_at(300)  # held between events


def test_linear_and_oneshot():
    lin = SparsitySchedule("linear", 0.5, 0, 100, 10)
    assert lin.sparsity_at(50) == pytest.approx(0.25)
    one = SparsitySchedule("oneshot", 0.7, 40, 40, 1)
    assert [t for t in range(100) if one.is_event(t)] == [40]
    assert one.sparsity_at(39) == 0.0 and one.sparsity_at(40) == 0.7


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"kind": "exp"}, "must be one of oneshot, linear, cubic"),
        ({"update_every": 0}, "update_every must be >= 1"),
        ({"begin_step": 10, "end_step": 5}, "0 <= begin <= end"),
    ],
)
def test_bad_schedules(kwargs, match):
    base = {"kind": "cubic", "final": 0.9, "begin_step": 0, "end_step": 10, "update_every": 1}
    with pytest.raises(ValueError, match=match):
        SparsitySchedule(**{**base, **kwargs})


def test_to_step_fraction_of_all_steps():
    assert to_step(0.5, 1000, "end") == 500
    assert to_step(1.0, 1000, "end") == 999  # the last optimizer step still fires
    with pytest.raises(ValueError, match="fraction of all optimizer steps"):
        to_step(1.5, 1000, "end")
