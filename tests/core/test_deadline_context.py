"""Deadlines, priorities and the context that carries them."""

import re
import threading
import time

import pytest

from django_aio_request import Context, Deadline, Priority, get_context, set_context


class TestDeadline:
    def test_from_timeout_leaves_that_many_seconds(self) -> None:
        before = time.monotonic()
        deadline = Deadline.from_timeout(2.5)
        after = time.monotonic()

        assert before + 2.5 <= deadline.expires_at <= after + 2.5
        assert 2.4 < deadline.timeout <= 2.5
        assert not deadline.expired

    def test_accepts_integers_and_zero(self) -> None:
        assert 0.9 < Deadline.from_timeout(1).timeout <= 1.0
        zero = Deadline.from_timeout(0)
        assert zero.expired
        assert zero.timeout == 0.0

    @pytest.mark.parametrize("seconds", [-0.001, -5, float("nan"), float("inf"), float("-inf")])
    def test_from_timeout_rejects_negative_and_non_finite(self, seconds: float) -> None:
        with pytest.raises(ValueError, match="finite number of seconds"):
            Deadline.from_timeout(seconds)

    @pytest.mark.parametrize("seconds", [True, False, "1.0", None])
    def test_from_timeout_rejects_non_numbers(self, seconds: object) -> None:
        with pytest.raises(TypeError, match="number of seconds"):
            Deadline.from_timeout(seconds)  # type: ignore[arg-type]

    def test_timeout_shrinks_and_never_goes_negative(self) -> None:
        deadline = Deadline.from_timeout(0.05)
        first = deadline.timeout
        time.sleep(0.01)
        assert deadline.timeout < first
        time.sleep(0.06)
        assert deadline.expired
        assert deadline.timeout == 0.0
        assert float(deadline) == 0.0
        assert repr(deadline) == "<Deadline expired>"

    def test_float_and_repr_give_the_time_left(self) -> None:
        deadline = Deadline.from_timeout(3.0)
        assert 2.9 < float(deadline) <= 3.0
        assert re.fullmatch(r"<Deadline timeout=(2\.9\d\d|3\.000)s>", repr(deadline))

    def test_division_leaves_a_fraction_of_the_time_left(self) -> None:
        deadline = Deadline.from_timeout(3.0)
        third = deadline / 3
        half = deadline / 2.0
        assert 0.95 < third.timeout <= 1.0
        assert 1.45 < half.timeout <= 1.5
        assert 2.9 < (deadline / 1).timeout <= 3.0
        assert 2.9 < deadline.timeout <= 3.0  # the original is unchanged

    def test_dividing_an_expired_deadline_gives_an_expired_one(self) -> None:
        assert (Deadline.from_timeout(0) / 4).expired

    @pytest.mark.parametrize("divisor", [0, -1, 0.0, float("nan"), float("inf")])
    def test_division_by_a_non_positive_or_non_finite_number_fails(self, divisor: float) -> None:
        with pytest.raises(ValueError, match="positive number"):
            Deadline.from_timeout(1.0) / divisor

    @pytest.mark.parametrize("divisor", [True, "2", None])
    def test_division_by_a_non_number_is_a_type_error(self, divisor: object) -> None:
        with pytest.raises(TypeError):
            Deadline.from_timeout(1.0) / divisor


class TestPriority:
    @pytest.mark.parametrize(
        ("text", "expected"),
        [
            ("high", Priority.HIGH),
            ("HIGH", Priority.HIGH),
            (" Normal ", Priority.NORMAL),
            ("low\n", Priority.LOW),
            ("urgent", None),
            ("", None),
            (None, None),
        ],
    )
    def test_parse(self, text: str | None, expected: Priority | None) -> None:
        assert Priority.parse(text) is expected

    def test_sent_in_lower_case(self) -> None:
        assert [str(p) for p in Priority] == ["high", "normal", "low"]

    @pytest.mark.parametrize(
        ("asked", "outer", "expected"),
        [
            (Priority.LOW, Priority.HIGH, Priority.NORMAL),
            (Priority.HIGH, Priority.LOW, Priority.NORMAL),
            (Priority.HIGH, Priority.HIGH, Priority.HIGH),
            (Priority.LOW, Priority.LOW, Priority.LOW),
            (Priority.NORMAL, Priority.HIGH, Priority.NORMAL),
            (Priority.NORMAL, Priority.LOW, Priority.NORMAL),
            (Priority.HIGH, Priority.NORMAL, Priority.HIGH),
            (Priority.LOW, Priority.NORMAL, Priority.LOW),
            (Priority.HIGH, None, Priority.HIGH),
            (Priority.LOW, None, Priority.LOW),
        ],
    )
    def test_within_normalises_against_the_outer_priority(
        self, asked: Priority, outer: Priority | None, expected: Priority
    ) -> None:
        assert asked.within(outer) is expected


class TestContext:
    def test_nothing_set_by_default(self) -> None:
        assert get_context() == Context(deadline=None, priority=None)

    def test_nesting_keeps_what_is_left_out_and_restores_on_exit(self) -> None:
        outer_deadline = Deadline.from_timeout(10)
        inner_deadline = Deadline.from_timeout(1)
        with set_context(deadline=outer_deadline, priority=Priority.HIGH) as outer:
            assert outer == Context(outer_deadline, Priority.HIGH)
            assert get_context() is outer
            with set_context(priority=Priority.LOW):
                assert get_context() == Context(outer_deadline, Priority.LOW)
                with set_context(deadline=inner_deadline):
                    assert get_context() == Context(inner_deadline, Priority.LOW)
                assert get_context() == Context(outer_deadline, Priority.LOW)
            assert get_context() is outer
            with set_context(deadline=None):
                assert get_context() == Context(None, Priority.HIGH)  # None clears, leaving out keeps
            assert get_context() is outer
        assert get_context() == Context()

    def test_a_context_cannot_be_changed_once_made(self) -> None:
        # Hedging workers and async tasks share one instance: none may change it under the others.
        context = Context(Deadline.from_timeout(5), Priority.HIGH)
        with pytest.raises(AttributeError):
            context.deadline = None  # type: ignore[misc]
        with pytest.raises(AttributeError):
            context.priority = Priority.LOW  # type: ignore[misc]
        with pytest.raises(AttributeError):
            context.extra = 1  # type: ignore[attr-defined]
        assert context.priority is Priority.HIGH

    def test_equal_contexts_hash_alike_and_read_well(self) -> None:
        deadline = Deadline.from_timeout(5)
        assert Context(deadline, Priority.LOW) == Context(deadline, Priority.LOW)
        assert len({Context(deadline, Priority.LOW), Context(deadline, Priority.LOW), Context()}) == 2
        assert Context(deadline, Priority.LOW) != Context(Deadline.from_timeout(5), Priority.LOW)
        assert Context(deadline) != Context(deadline, Priority.LOW)
        assert Context() != (None, None)
        assert repr(Context(None, Priority.HIGH)) == "Context(deadline=None, priority=<Priority.HIGH: 'high'>)"

    def test_restored_when_the_block_raises(self) -> None:
        def fail_inside() -> None:
            with set_context(priority=Priority.LOW):
                assert get_context().priority is Priority.LOW
                raise RuntimeError("inside")

        with pytest.raises(RuntimeError, match="inside"):
            fail_inside()
        assert get_context().priority is None

    def test_a_context_set_in_one_thread_is_not_seen_by_another(self) -> None:
        seen: list[Context] = []
        entered, checked = threading.Event(), threading.Event()

        def setter() -> None:
            with set_context(priority=Priority.HIGH, deadline=Deadline.from_timeout(5)):
                entered.set()
                checked.wait(5)

        thread = threading.Thread(target=setter)
        thread.start()
        assert entered.wait(5)
        reader = threading.Thread(target=lambda: seen.append(get_context()))
        reader.start()
        reader.join(5)
        checked.set()
        thread.join(5)

        assert seen == [Context()]
        assert get_context() == Context()


@pytest.mark.parametrize(("deadline", "priority"), [(5.0, None), (None, "high"), ("soon", None)])
def test_set_context_refuses_values_of_the_wrong_type(deadline: object, priority: object) -> None:
    with pytest.raises(TypeError), set_context(deadline=deadline, priority=priority):
        pass
