"""What the CLI's tests share: a small template with scheduled functions, and handlers for it.

One module (not a test file others import from)."""

from __future__ import annotations

from pathlib import Path

from oidc_broker_cli.template import Template

SCHEDULED = """
Transform: AWS::Serverless-2016-10-31
Globals:
  Function:
    Handler: app.handler
Resources:
  RotateFunction:
    Type: AWS::Serverless::Function
    Properties:
      CodeUri: functions/rotate/
      Events:
        Daily:
          Type: Schedule
          Properties:
            Schedule: rate(1 day)
  RefreshFunction:
    Type: AWS::Serverless::Function
    Properties:
      CodeUri: functions/refresh/
      Events:
        Hourly:
          Type: ScheduleV2
          Properties:
            ScheduleExpression: cron(0 * * * ? *)
            Name: refresh-hourly
            Input: '{"scope": "all"}'
        Nightly:
          Type: Schedule
          Properties:
            Schedule: cron(0 3 * * ? *)
            Enabled: false
  TokenFunction:
    Type: AWS::Serverless::Function
    Properties:
      CodeUri: functions/token/
      Events:
        Token:
          Type: HttpApi
          Properties: {Path: /token, Method: post}
"""

# Each handler answers with the event it received, so a test sees what Lambda would hand it.
ECHO = "def handler(event, context):\n    return {'event': event, 'function': context.function_name}\n"


def scheduled_template(root: Path) -> Template:
    """SCHEDULED as root/template.yaml, with an echoing handler for each function."""
    (root / "template.yaml").write_text(SCHEDULED)
    for name in ("rotate", "refresh", "token"):
        folder = root / "functions" / name
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "app.py").write_text(ECHO)
    return Template(root / "template.yaml")
