"""What local mode reads from template.yaml, so local resources and routes cannot drift from it."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .yamlfile import load_template


@dataclass(frozen=True)
class Route:
    method: str
    path: str
    function: str  # logical id
    code_uri: Path
    handler: str  # module.function

    def match(self, method: str, path: str) -> dict[str, str] | None:
        if self.method not in ("ANY", method):
            return None
        pattern = re.sub(r"\\\{(\w+)\\\}", r"(?P<\1>[^/]+)", re.escape(self.path))
        m = re.fullmatch(pattern, path)
        return m.groupdict() if m else None


SCHEDULE_EVENTS = ("Schedule", "ScheduleV2")  # an EventBridge rule; an EventBridge Scheduler schedule


@dataclass(frozen=True)
class Schedule:
    """A function's Schedule or ScheduleV2 event, as local mode fires it on demand."""

    function: str  # logical id
    event: str  # the event's key under the function's Events
    kind: str  # Schedule or ScheduleV2
    expression: str  # rate(...) or cron(...), as written
    name: str  # the rule's (or schedule's) name: its Name, or one made from the logical ids
    group: str  # ScheduleV2's schedule group ("default"); empty for a rule
    input: str | None  # the event's Input: JSON the target receives instead of the scheduled event
    enabled: bool

    def arn(self, region: str, account: str) -> str:
        if self.kind == "ScheduleV2":
            return f"arn:aws:scheduler:{region}:{account}:schedule/{self.group}/{self.name}"
        return f"arn:aws:events:{region}:{account}:rule/{self.name}"


class Template:
    def __init__(self, path: Path, text: str | None = None):
        """template.yaml at `path`, or `text` read as if it were there (CodeUri is relative to its folder)."""
        self.path = path
        self.root = path.parent
        self.doc = load_template(path.read_text() if text is None else text)
        self.resources: dict[str, dict[str, Any]] = self.doc["Resources"]
        self.globals = (self.doc.get("Globals") or {}).get("Function") or {}

    def of_type(self, kind: str) -> dict[str, dict[str, Any]]:
        return {name: r for name, r in self.resources.items() if r.get("Type") == kind}

    def one(self, kind: str) -> tuple[str, dict[str, Any]]:
        found = self.of_type(kind)
        if len(found) != 1:
            raise ValueError(f"{self.path}: expected one {kind}, found {len(found)}")
        return next(iter(found.items()))

    def function(self, logical_id: str) -> tuple[Path, str]:
        props = self.resources[logical_id]["Properties"]
        code_uri = props.get("CodeUri", self.globals.get("CodeUri"))
        handler = props.get("Handler", self.globals.get("Handler"))
        return self.root / code_uri, handler

    def timeout(self, logical_id: str) -> int:
        """A function's Timeout in seconds: its own, else Globals', else Lambda's default (3)."""
        props = self.resources[logical_id]["Properties"]
        return int(props.get("Timeout", self.globals.get("Timeout", 3)))

    def routes(self) -> list[Route]:
        routes = []
        for name, resource in self.of_type("AWS::Serverless::Function").items():
            for event in (resource["Properties"].get("Events") or {}).values():
                if event.get("Type") != "HttpApi":
                    continue
                code_uri, handler = self.function(name)
                props = event["Properties"]
                routes.append(Route(props["Method"].upper(), props["Path"], name, code_uri, handler))
        return routes

    def schedules(self, stack: str = "oidc-broker-local") -> list[Schedule]:
        """Every function's Schedule and ScheduleV2 events, in template order.

        A rule without a Name gets CloudFormation's kind of name, `<stack>-<function><event>`
        (without its random suffix). Name and Input must be literal strings here.
        """
        schedules = []
        for function, resource in self.of_type("AWS::Serverless::Function").items():
            for event_id, event in (resource["Properties"].get("Events") or {}).items():
                kind = event.get("Type")
                if kind not in SCHEDULE_EVENTS:
                    continue
                props = event.get("Properties") or {}
                expression = props.get("Schedule" if kind == "Schedule" else "ScheduleExpression", "")
                if isinstance(expression, dict):  # a parameter's Ref: local mode runs with the defaults
                    defaults = {name: self.parameter_default(name) for name in self.doc.get("Parameters", {})}
                    expression = self.resolve(expression, defaults)
                default_name = f"{stack}-{function}{event_id}" if kind == "Schedule" else f"{function}{event_id}"
                state = props.get("State", "ENABLED")
                enabled = props.get("Enabled", True) is not False and state != "DISABLED"
                schedules.append(Schedule(
                    function=function, event=event_id, kind=kind, expression=str(expression),
                    name=_literal(props.get("Name", default_name), f"{function}.Events.{event_id}.Name"),
                    group=_literal(props.get("GroupName", "default"), f"{function}.Events.{event_id}.GroupName")
                    if kind == "ScheduleV2" else "",
                    input=_literal(props["Input"], f"{function}.Events.{event_id}.Input") if "Input" in props else None,
                    enabled=enabled,
                ))
        return schedules

    def environment(self, refs: dict[str, str]) -> dict[str, str]:
        """Globals' function environment with Ref/GetAtt resolved from `refs`."""
        variables = ((self.globals.get("Environment") or {}).get("Variables")) or {}
        return {k: _resolve(v, refs) for k, v in variables.items()}

    def parameter_default(self, name: str) -> str:
        return str(self.doc.get("Parameters", {}).get(name, {}).get("Default", ""))

    def resolve(self, value: Any, refs: dict[str, str]) -> str:
        """A property value with Ref/GetAtt/Sub resolved from `refs`, and Fn::If by the template's Conditions."""
        return _resolve(value, refs, self.doc.get("Conditions") or {})


def _literal(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise ValueError(f"local mode needs {where} as a literal string, not {value!r}")
    return value


def _holds(condition: Any, refs: dict[str, str], conditions: dict[str, Any]) -> bool:
    """A condition expression evaluated as CloudFormation does, over resolved `refs`."""
    (function, args), = condition.items()
    if function in ("Condition", "Fn::Condition"):
        return _holds(conditions[args], refs, conditions)
    if function == "Fn::Equals":
        return _resolve(args[0], refs, conditions) == _resolve(args[1], refs, conditions)
    if function == "Fn::Not":
        return not _holds(args[0], refs, conditions)
    if function == "Fn::And":
        return all(_holds(a, refs, conditions) for a in args)
    if function == "Fn::Or":
        return any(_holds(a, refs, conditions) for a in args)
    raise ValueError(f"local mode cannot evaluate the condition {condition!r}")


def _resolve(value: Any, refs: dict[str, str], conditions: dict[str, Any] | None = None) -> str:
    if isinstance(value, dict) and "Fn::If" in value and conditions is not None:
        name, then, otherwise = value["Fn::If"]
        # Only the branch taken is resolved, as in CloudFormation (the other may name a resource
        # local mode does not have, such as the HttpApi).
        return _resolve(then if _holds(conditions[name], refs, conditions) else otherwise, refs, conditions)
    if isinstance(value, dict) and "Ref" in value:
        return refs[value["Ref"]]
    if isinstance(value, dict) and "Fn::GetAtt" in value:
        return refs[".".join(value["Fn::GetAtt"])]
    if isinstance(value, dict) and "Fn::Sub" in value and isinstance(value["Fn::Sub"], str):
        return re.sub(r"\$\{([\w.:]+)\}", lambda m: refs[m.group(1)], value["Fn::Sub"])
    if isinstance(value, (str, int, float)):
        return str(value)
    raise ValueError(f"local mode cannot resolve {value!r}")
