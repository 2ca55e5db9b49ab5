"""A blocking caller runs the engine's coroutines whether or not its thread already runs
an event loop (a browser-driving test, an embedding application)."""

from __future__ import annotations

import asyncio
import threading

from tests.support.unitkit import run_coroutine

from dde.dicom.engine.blocking import BlockingLoop


async def where() -> str:
    await asyncio.sleep(0)
    return threading.current_thread().name


def test_a_plain_thread_runs_the_loop_itself() -> None:
    seen: list[tuple[str, str, bool]] = []

    def plain() -> None:  # a thread of our own: pytest's may run a browser test's loop
        loop = BlockingLoop()
        try:
            seen.append((loop.run(where()), threading.current_thread().name, False))
        finally:
            loop.close()
        seen[-1] = (*seen[-1][:2], loop.closed)

    thread = threading.Thread(target=plain, name="plain")
    thread.start()
    thread.join(30)
    assert seen == [("plain", "plain", True)]


def test_inside_a_running_loop_the_association_gets_a_thread_of_its_own() -> None:
    async def outer() -> tuple[str, str]:
        loop = BlockingLoop()
        try:
            return loop.run(where()), threading.current_thread().name
        finally:
            loop.close()

    inner, caller = run_coroutine(outer())
    assert inner == "dicom-association" and inner != caller


def test_a_callback_from_another_thread_runs_on_the_loop() -> None:
    loop = BlockingLoop()
    seen: list[str] = []
    done = asyncio.Event()

    async def wait_for_it() -> None:
        await done.wait()

    def from_elsewhere() -> None:
        loop.call_soon_threadsafe(lambda: (seen.append("ran"), done.set()))

    threading.Thread(target=from_elsewhere).start()
    loop.run(asyncio.wait_for(wait_for_it(), 5))
    loop.close()
    assert seen == ["ran"]
