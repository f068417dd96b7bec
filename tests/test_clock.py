"""Class mode: the budget, the step clock and generation under a deadline, on a fake clock."""

import types

import pytest

from helpers import clock, generation
from helpers.generation import Reply, generate_to_jsonl


class FakeTime:
    """time.monotonic() that moves only when a test says so."""

    def __init__(self):
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now


@pytest.fixture
def fake_time(monkeypatch):
    fake = FakeTime()
    monkeypatch.setattr(clock.time, "monotonic", fake.monotonic)
    return fake


def test_no_budget_means_no_deadline_and_says_so(fake_time):
    budget = clock.Budget(None)
    fake_time.now += 75
    assert budget.deadline() is None and budget.left() == float("inf")
    assert clock.fits_before(None, 10**9)
    assert budget.report() == "This notebook took 75 s (no TIME_BUDGET_MIN set)."


def test_a_phase_gets_its_share_of_what_is_left_after_what_is_kept(fake_time):
    budget = clock.Budget(10)  # 600 s
    fake_time.now += 100  # 500 s left
    assert budget.deadline(0.5, keep=100) == pytest.approx(fake_time.now + 200)
    assert budget.deadline(keep=1000) == pytest.approx(fake_time.now)  # nothing left: the deadline is now
    assert "within its budget of 10 min" in budget.report()
    fake_time.now += 501
    assert "over its budget" in budget.report()


def _train(clock_cb, fake_time, durations, max_steps, world_size=1):
    """Drive the callback as the Trainer does: begin, then one on_step_end per step, until it stops."""
    args = types.SimpleNamespace(world_size=world_size)
    state = types.SimpleNamespace(max_steps=max_steps, global_step=0, is_world_process_zero=True)
    control = types.SimpleNamespace(should_training_stop=False)
    clock_cb.on_train_begin(args, state, control)
    for seconds in durations:
        fake_time.now += seconds
        state.global_step += 1
        clock_cb.on_step_end(args, state, control)
        if control.should_training_stop or state.global_step == max_steps:
            break
    return state.global_step


def test_the_warm_up_step_is_reported_apart_from_the_steady_step_time(fake_time, capsys):
    steps = clock.StepClock()
    done = _train(steps, fake_time, [12.0] + [2.0] * 9, max_steps=10)
    assert done == 10 and steps.cut == 0
    assert steps.warmup_seconds == pytest.approx(12.0) and steps.step_seconds == pytest.approx(2.0)
    printed = capsys.readouterr().out
    assert "Step time 2.00 s after a warm-up of 12.0 s: 7 more steps take about 14 s" in printed
    assert steps.summary().startswith("10 steps in 30 s: warm-up 12.0 s (step 1")


def test_the_saved_timings_keep_every_step_so_a_slow_second_step_shows(fake_time):
    steps = clock.StepClock()
    _train(steps, fake_time, [12.0, 9.0, 2.0, 2.0], max_steps=4)  # step 2 recompiles
    saved = steps.timings()
    assert saved["step_durations"] == [12.0, 9.0, 2.0, 2.0]
    assert saved["warmup_seconds"] == 12.0 and saved["step_seconds"] == pytest.approx(13 / 3)
    assert saved["steps_cut"] == 0


def test_a_deadline_stops_before_a_step_that_would_not_finish(fake_time):
    budget = clock.Budget(1)  # 60 s: warm-up 12 s, then 4 s a step
    steps = clock.StepClock(budget.deadline(keep=8))  # 52 s for training
    done = _train(steps, fake_time, [12.0] + [4.0] * 39, max_steps=40)
    # a step starts only if it ends by 52 s: 12 + 4 × 10 = 52, so 10 steady steps, 11 in all
    assert done == 11 and steps.cut == 29
    assert fake_time.now - budget.started <= 52
    assert "stopped training after step 11 of 40 (29 cut)" in steps.summary()


def test_with_several_processes_the_deadline_is_not_applied(fake_time):
    steps = clock.StepClock(clock.Budget(1).deadline())
    assert _train(steps, fake_time, [12.0] + [4.0] * 39, max_steps=40, world_size=2) == 40
    assert steps.cut == 0


ITEMS = [{"id": f"q{i}", "prompt": f"question {i}"} for i in range(10)]


@pytest.fixture
def slow_generate(monkeypatch, fake_time):
    """generate_replies that takes 10 s of fake time per batch."""
    def fake(model, tokenizer, questions, **kwargs):
        fake_time.now += 10
        return [Reply(q, "Answer: B", 3, 10 / len(questions)) for q in questions]

    monkeypatch.setattr(generation, "generate_replies", fake)


def test_generation_starts_no_batch_past_the_deadline_and_a_rerun_finishes(tmp_path, slow_generate, fake_time,
                                                                           capsys):
    path = tmp_path / "mcq.jsonl"
    records = generate_to_jsonl(None, None, ITEMS, path, batch_size=2, desc="exam",
                                deadline=fake_time.now + 35)
    assert [r["id"] for r in records] == ["q0", "q1", "q2", "q3", "q4", "q5"]  # 3 batches of 10 s fit in 35
    assert "TIME_BUDGET_MIN: exam: 6 of 10 answered, the last 4 cut" in capsys.readouterr().out
    assert generation.answered([types.SimpleNamespace(id=i["id"]) for i in ITEMS], records)[-1].id == "q5"
    again = generate_to_jsonl(None, None, ITEMS, path, batch_size=2)  # no budget: the rest, nothing lost
    assert [r["id"] for r in again] == [i["id"] for i in ITEMS]


def test_answered_keeps_only_items_every_model_answered():
    items = [types.SimpleNamespace(id=i) for i in ("a", "b", "c")]
    assert [i.id for i in generation.answered(items, [{"id": "a"}, {"id": "b"}], [{"id": "b"}])] == ["b"]
