"""Lambda's part of local mode: the template's functions, loaded on first use, invoked as Lambda would.

Lambda runs each function in its own process. Here they share one, so each function gets its own
lock (one warm container: one request at a time) and, when first imported, its own logger:
Powertools keys its logger by service name, and functions would otherwise share keys mid-request.
Scheduled functions are fired on demand with the event their schedule would send, and any function
is invoked with an event of the caller's as Lambda Invoke would (an unknown one: UnknownFunction).
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import threading
import time
from typing import Any, Callable

from ..template import Schedule, Template
from .events import LambdaContext, scheduled_event


class NotScheduled(LookupError):
    """The function named has no such schedule in the template (the message says what there is)."""


class UnknownFunction(LookupError):
    """No function of the template has that logical id (the message names those there are)."""


class Functions:
    def __init__(self, template: Template):
        self.template = template
        self.schedules: list[Schedule] = template.schedules()
        self._handlers: dict[str, Callable] = {}
        self._locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()

    def invoke(self, logical_id: str, event: Any) -> Any:
        """Call a function's handler: one request at a time per function."""
        with self._guard:
            lock = self._locks.setdefault(logical_id, threading.Lock())
        with lock:
            handler = self._handlers.get(logical_id)
            if handler is None:
                handler = self._handlers[logical_id] = self._load(logical_id)
            return handler(event, LambdaContext(logical_id, self.template.timeout(logical_id)))

    def schedule(self, logical_id: str, event_id: str | None = None) -> Schedule:
        """The schedule to fire: the function's only one, or the one under `event_id`."""
        functions = self.template.of_type("AWS::Serverless::Function")
        if logical_id not in functions:
            raise NotScheduled(f"{logical_id} is not a function in {self.template.path.name}")
        mine = [s for s in self.schedules if s.function == logical_id]
        if not mine:
            scheduled = sorted({s.function for s in self.schedules})
            raise NotScheduled(f"{logical_id} has no Schedule or ScheduleV2 event in {self.template.path.name}; "
                               + (f"scheduled functions: {', '.join(scheduled)}" if scheduled else
                                  "no function there has one"))
        if event_id is None and len(mine) == 1:
            return mine[0]
        for schedule in mine:
            if schedule.event == event_id:
                return schedule
        names = ", ".join(s.event for s in mine)
        raise NotScheduled(f"{logical_id} has {len(mine)} schedule events ({names}): name one, "
                           f"/_local/schedule/{logical_id}/<event>" if event_id is None else
                           f"{logical_id} has no schedule event {event_id}; it has {names}")

    def fire(self, logical_id: str, event_id: str | None = None, now: float | None = None) -> tuple[Schedule, Any]:
        """Invoke a scheduled function now, with the event its schedule sends; its schedule and result."""
        schedule = self.schedule(logical_id, event_id)
        event = scheduled_event(schedule, time.time() if now is None else now)
        return schedule, self.invoke(logical_id, event)

    def _load(self, logical_id: str) -> Callable:
        functions = self.template.of_type("AWS::Serverless::Function")
        if logical_id not in functions:
            raise UnknownFunction(f"{logical_id} is not a function in {self.template.path.name}; "
                                  f"its functions: {', '.join(functions)}")
        code_uri, spec = self.template.function(logical_id)
        module_name, func = spec.rsplit(".", 1)
        logging.Logger.manager.loggerDict.pop(os.environ.get("POWERTOOLS_SERVICE_NAME", "service_undefined"), None)
        spec_obj = importlib.util.spec_from_file_location(f"functions.{logical_id}.{module_name}",
                                                          code_uri / f"{module_name}.py")
        module = importlib.util.module_from_spec(spec_obj)
        spec_obj.loader.exec_module(module)
        return getattr(module, func)


def result_json(result: Any) -> Any:
    """A handler's return value as JSON can carry it (datetimes and the like as strings)."""
    return json.loads(json.dumps(result, default=str))
