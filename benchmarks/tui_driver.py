"""The real TUI, headless under Textual's Pilot, measuring itself (run by benchmarks/tui.py).

``python -m benchmarks.tui_driver SOCKET IDLE_S LOAD_S`` connects the app to
SOCKET at 120x36, waits until the tickets panel holds the snapshot, prints
``ready``, idles IDLE_S, prints ``load``, then for LOAD_S presses j or k every
:data:`KEY_EVERY_S` while the parent streams events, and prints one JSON object:

* ``key_ms``: per key press, from the driver receiving the key to the first screen update
  after the cursor moved (``App._display``, where Textual hands a frame to the
  driver);
* ``event_ms``: per event applied, from its ``ts`` (the publisher's wall clock,
  set just before publishing) to the first screen update after it was applied.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

from textual import events

from orchestrator.shared.protocol import Event
from orchestrator.tui import app as app_module
from orchestrator.tui.app import OrchestratorApp
from orchestrator.tui.messages import DaemonEvents
from orchestrator.tui.widgets.tickets_table import TicketsTable

KEY_EVERY_S = 0.2
SIZE = (120, 36)


class MeasuredApp(OrchestratorApp):
    """The real app, timestamping frames and the events each frame first shows."""

    # CSS_PATH is relative to the module of the class that sets it.
    CSS_PATH = str(Path(app_module.__file__).with_name("app.tcss"))

    def __init__(self, socket_path: Path) -> None:
        super().__init__(socket_path)
        self.frames: list[float] = []
        self.event_ms: list[float] = []
        self._applied: list[float] = []

    def on_daemon_events(self, message: DaemonEvents) -> None:
        stamps = [item.ts for item in message.items if isinstance(item, Event)]
        super().on_daemon_events(message)
        self._applied += stamps

    def _display(self, screen: Any, renderable: Any) -> None:
        super()._display(screen, renderable)
        now = time.time()
        self.frames.append(time.monotonic())
        if self._applied:
            self.event_ms += [(now - ts) * 1000 for ts in self._applied]
            self._applied = []


async def main(socket_path: Path, idle_s: float, load_s: float) -> dict[str, Any]:
    app = MeasuredApp(socket_path)
    key_ms: list[float] = []
    async with app.run_test(size=SIZE, headless=True) as pilot:
        table = app.query_one(TicketsTable)
        deadline = time.monotonic() + 120
        while table.row_count < 1000:
            if time.monotonic() > deadline:
                raise SystemExit("the TUI did not load the snapshot within 120 s")
            await asyncio.sleep(0.05)
        table.focus()
        driver = app._driver
        assert driver is not None
        await pilot.pause(0.5)
        print("ready", flush=True)
        await asyncio.sleep(idle_s)
        app.event_ms.clear()
        print("load", flush=True)
        end = time.monotonic() + load_s
        down = True
        while time.monotonic() < end:
            before = table.cursor_row
            t0 = time.monotonic()
            # As a terminal driver delivers a key; Pilot.press would also wait for
            # the app to go idle, which it rarely does under a stream of events.
            key = "j" if down else "k"
            event = events.Key(key, key)
            event.set_sender(app)
            driver.send_message(event)
            while table.cursor_row == before:
                await asyncio.sleep(0.0005)
            moved = time.monotonic()
            while not (app.frames and app.frames[-1] >= moved):
                await asyncio.sleep(0.0005)
            frame = next(f for f in app.frames if f >= moved)
            key_ms.append((frame - t0) * 1000)
            if table.cursor_row >= 60:
                down = False
            elif table.cursor_row <= 1:
                down = True
            await asyncio.sleep(max(0.0, KEY_EVERY_S - (time.monotonic() - t0)))
        print("done", flush=True)
    return {"key_ms": key_ms, "event_ms": app.event_ms}


if __name__ == "__main__":
    import os

    profile_to = os.environ.get("ORCH_BENCH_PROFILE")  # a pyinstrument text report here
    profiler = None
    if profile_to:
        from pyinstrument import Profiler

        profiler = Profiler(async_mode="disabled")
        profiler.start()
    result = asyncio.run(main(Path(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3])))
    if profiler is not None:
        profiler.stop()
        Path(profile_to).write_text(profiler.output_text(unicode=False, color=False, show_all=True))
    print(json.dumps(result), flush=True)
