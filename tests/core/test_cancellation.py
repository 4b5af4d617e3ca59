"""How a strategy stops an attempt and asks whether its answer arrived (core/cancellation.py).

The object on its own first; then with the real transport on a loopback server, which is how every
hedged call's attempt 0 uses it.
"""

import threading

import pytest

from django_aio_request import RequestsTransport, get
from django_aio_request.core.cancellation import Cancellation
from tests.support.loopback import LoopbackServer, answer_when
from tests.support.steps import run_with_step


def test_a_cancel_aborts_the_attempt_once_and_not_after_it_is_over() -> None:
    cancellation, aborted = Cancellation(), []
    over = cancellation.watch_attempt(lambda: aborted.append("first"), lambda: False)
    over()
    second = Cancellation()
    second.watch_attempt(lambda: aborted.append("second"), lambda: False)
    cancellation.cancel()
    second.cancel()
    second.cancel()
    assert aborted == ["second"]


def test_an_attempt_watched_after_the_cancel_is_aborted_at_once() -> None:
    cancellation, aborted = Cancellation(), []
    cancellation.cancel()
    over = cancellation.watch_attempt(lambda: aborted.append(1), lambda: False)
    assert aborted == [1]
    over()
    assert cancellation.answer_arrived()  # over: whatever it got is its caller's to read


def test_answer_arrived_asks_the_attempt_while_it_runs_and_says_yes_once_it_is_over() -> None:
    cancellation, waiting = Cancellation(), [False]
    assert not cancellation.answer_arrived()  # no attempt yet: unknown
    over = cancellation.watch_attempt(lambda: None, lambda: waiting[0])
    assert not cancellation.answer_arrived()
    waiting[0] = True
    assert cancellation.answer_arrived()
    waiting[0] = False
    over()
    assert cancellation.answer_arrived()


def test_other_callbacks_stay_when_an_attempt_is_over() -> None:
    cancellation, called = Cancellation(), []
    cancellation.on_cancel(lambda: called.append("pause"))
    cancellation.watch_attempt(lambda: called.append("attempt"), lambda: False)()
    cancellation.cancel()
    assert called == ["pause"]


def test_attempts_sharing_one_cancellation_are_each_aborted_until_each_is_over() -> None:
    """A strategy or transport of the application's own may run attempts at once on one
    cancellation (found by review: only the last watched was aborted, and the first to end let go
    of the others)."""
    cancellation, aborted = Cancellation(), []
    first_over = cancellation.watch_attempt(lambda: aborted.append("first"), lambda: False)
    second_over = cancellation.watch_attempt(lambda: aborted.append("second"), lambda: False)
    third_over = cancellation.watch_attempt(lambda: aborted.append("third"), lambda: False)
    first_over()  # over: not aborted, and the others still are
    cancellation.cancel()
    second_over()
    third_over()
    assert sorted(aborted) == ["second", "third"]
    later = Cancellation()
    later.watch_attempt(lambda: aborted.append("a"), lambda: False)
    later.watch_attempt(lambda: aborted.append("b"), lambda: False)()  # the second over first
    later.cancel()
    assert aborted[-1:] == ["a"]


def test_the_transport_lets_go_of_the_attempt_once_it_returned(server: LoopbackServer) -> None:
    """After ``send`` returns, a cancel (a hedge that won later) touches nothing, and the strategy's
    question gets "arrived": no hedge goes for an attempt whose answer is in its caller's hands."""
    server.route("/ok", lambda handler: handler.reply(200, b"ok"))
    transport, cancellation = RequestsTransport(), Cancellation()
    try:
        response = transport.send(server.url, get("ok"), 2.0, cancellation)
        assert cancellation.answer_arrived()
        cancellation.cancel()
        assert response.status == 200
        assert response.read() == b"ok"  # the cancel did not shut the connection it was read from
    finally:
        transport.close()


def test_the_transport_aborts_a_running_attempt_on_cancel(server: LoopbackServer) -> None:
    release = threading.Event()

    server.route("/slow", answer_when(release))
    transport, cancellation = RequestsTransport(), Cancellation()
    try:
        timer = threading.Timer(0.2, cancellation.cancel)
        timer.start()
        response = transport.send(server.url, get("slow"), 5.0, cancellation)
        timer.join()
        assert response.status == 499  # abandoned, not waited for
        assert response.elapsed < 1.0
    finally:
        release.set()
        transport.close()


def _aborted(step: int | None, *, cancel_inside: bool) -> tuple[bool, int]:
    """Watch an attempt and cancel, one of the two coming in at ``step`` of the other (None: after
    it); whether the attempt was aborted, and the steps the other took."""
    cancellation, aborted, over = Cancellation(), [], []

    def watch() -> None:
        over.append(cancellation.watch_attempt(lambda: aborted.append(1), lambda: False))

    outer, inner = (watch, cancellation.cancel) if cancel_inside else (cancellation.cancel, watch)
    code = (Cancellation.watch_attempt if cancel_inside else Cancellation.cancel).__code__
    steps = run_with_step(outer, code, step, inner)  # neither holds a lock the other waits on then
    if step is None:
        inner()
    for attempt_over in over:
        attempt_over()  # the attempt is over only after both ran
    return bool(aborted), steps


@pytest.mark.parametrize("cancel_inside", [True, False], ids=["a cancel inside the watch", "a watch inside the cancel"])
def test_a_cancel_between_any_two_steps_of_watching_an_attempt_aborts_it(cancel_inside: bool) -> None:
    """The attempt's hold is taken without a lock (every hedged call's attempt 0 takes one): a cancel
    from another thread at any moment of it, before the attempt is over, must abort the attempt, and
    an attempt watched at any moment of a cancel must be aborted too."""
    aborted, steps = _aborted(None, cancel_inside=cancel_inside)
    assert aborted
    assert steps > 3
    missed = [step for step in range(steps) if not _aborted(step, cancel_inside=cancel_inside)[0]]
    assert not missed, f"at these steps of {steps} the attempt ran on: {missed}"
