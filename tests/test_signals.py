"""Wake-ups inside one harvester: a notify that comes while the waiter is still looking
at the database must not be lost (it would cost the waiter its whole recheck interval)."""

from __future__ import annotations

import asyncio
import threading
import time

from harvester.stores.signals import NOTIFIED, PASSED_ON, Wakeups


def test_a_notify_between_the_look_and_the_wait_is_kept() -> None:
    async def scenario() -> tuple[bool, float]:
        wakeups = Wakeups()
        with wakeups.watch("ANALY_LOCAL") as activated:
            # the look found nothing; brokerage activates a job from its thread right now
            notifier = threading.Thread(target=wakeups.notify, args=("ANALY_LOCAL",))
            notifier.start()
            notifier.join()
            began = time.monotonic()
            woken = await activated.wait(10)
            return woken, time.monotonic() - began

    woken, waited = asyncio.run(scenario())
    assert woken and waited < 1


def test_a_watch_without_a_notify_times_out_and_a_closed_one_does_not_wait() -> None:
    async def scenario() -> tuple[bool, bool, float]:
        wakeups = Wakeups()
        with wakeups.watch("q") as nothing:
            quiet = await nothing.wait(0.05)
        with wakeups.watch("other") as other:
            wakeups.notify("q")  # another key's notify wakes no one here
            missed = await other.wait(0.05)
        wakeups.close()
        began = time.monotonic()
        with wakeups.watch("q") as after_close:
            await after_close.wait(10)
        return quiet, missed, time.monotonic() - began

    quiet, missed, waited = asyncio.run(scenario())
    assert not quiet and not missed and waited < 1


def test_a_limited_notify_wakes_that_many_and_never_the_excluded() -> None:
    """Brokerage wakes one long-polling pilot per job it activated, not the whole queue;
    a pilot that cannot take its job hands the wake-up on, never to itself."""

    async def scenario() -> tuple[list[str | None], list[str | None]]:
        wakeups = Wakeups()
        with (
            wakeups.watch("ANALY_LOCAL") as a,
            wakeups.watch("ANALY_LOCAL") as b,
            wakeups.watch("ANALY_LOCAL") as c,
        ):
            wakeups.notify("ANALY_LOCAL", 1)  # one job activated
            await asyncio.sleep(0)  # the notify is delivered on the loop
            assert [a.notified, b.notified, c.notified].count(True) == 1
            first = await asyncio.gather(a.wait(0.2), b.wait(0.2), c.wait(0.2))
        with wakeups.watch("ANALY_LOCAL") as a, wakeups.watch("ANALY_LOCAL") as b:
            wakeups.notify("ANALY_LOCAL", 1, reason=PASSED_ON, exclude=a)
            second = await asyncio.gather(a.wait(0.2), b.wait(0.2))
        return first, second

    first, second = asyncio.run(scenario())
    assert sorted(first, key=str) == [None, None, NOTIFIED]
    assert second == [None, PASSED_ON]
