"""The published JSON Schemas (docs/schemas/): generated from the structs, and true.

Each schema is checked with a real validator (jsonschema) against documents the
code itself writes or accepts, and against documents it refuses.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import jsonschema
import msgspec
import pytest
import yaml

from orchestrator.shared.cistatus import decode_status, encode_status, make_status
from orchestrator.shared.models import CIVerdict, parse_ticket

REPO = Path(__file__).resolve().parents[2]
SCHEMAS = REPO / "docs" / "schemas"


def _schema_cli(document: str) -> dict:
    out = subprocess.run(
        [sys.executable, "-m", "orchestrator", "schema", document],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return json.loads(out)


@pytest.mark.parametrize("document", ["ticket", "ci-status"])
def test_published_schema_is_the_generated_one(document: str) -> None:
    published = json.loads((SCHEMAS / f"{document}.schema.json").read_text())
    assert _schema_cli(document) == published, (
        f"docs/schemas/{document}.schema.json is stale: regenerate it with "
        f"`orchestrator schema {document} > docs/schemas/{document}.schema.json`"
    )


def test_every_demo_ticket_is_valid_under_the_ticket_schema() -> None:
    validator = jsonschema.Draft202012Validator(_schema_cli("ticket"))
    tickets = sorted((REPO / "examples" / "demo" / "tickets").glob("*.yaml"))
    assert tickets
    for path in tickets:
        parse_ticket(path.read_bytes(), path)  # the daemon accepts it...
        validator.validate(yaml.safe_load(path.read_text()))  # ...and so does the schema


@pytest.mark.parametrize(
    "text",
    [
        "title: x\npriority: 7\n",  # out of range
        "title: x\nowner: me\n",  # unknown field
        "priority: 1\n",  # no title
        "title: x\nid: -bad\n",  # not a branch-safe id
        "title: x\nmax_attempts: 0\n",
    ],
)
def test_the_ticket_schema_refuses_what_the_daemon_refuses(text: str) -> None:
    from orchestrator.shared.errors import TicketError

    with pytest.raises(TicketError):
        parse_ticket(text.encode(), Path("t.yaml"))
    errors = list(
        jsonschema.Draft202012Validator(_schema_cli("ticket")).iter_errors(yaml.safe_load(text))
    )
    assert errors, f"the schema accepts {text!r}"


def test_a_written_ci_status_is_valid_and_decodes() -> None:
    status = make_status(
        sha="a" * 40,
        ref="refs/heads/agent-1/t",
        status=CIVerdict.FAIL,
        exit_code=1,
        started_s=1795278658.125,
        finished_s=1795278659.5,
        log=b"x\n" * 500,
    )
    raw = encode_status(status)
    jsonschema.Draft202012Validator(_schema_cli("ci-status")).validate(json.loads(raw))
    assert decode_status(raw) == status
    assert status.started_at == "2026-11-21T16:30:58.125Z"
    assert status.duration_s == 1.375
    assert len(status.log_tail.splitlines()) == 100


def test_a_status_with_another_verdict_is_refused_by_both() -> None:
    doc = {
        "sha": "a" * 40,
        "ref": "",
        "status": "running",
        "exit_code": 0,
        "started_at": "",
        "finished_at": "",
        "duration_s": 0.0,
        "log_tail": "",
    }
    with pytest.raises(msgspec.ValidationError):
        decode_status(json.dumps(doc).encode())
    assert list(jsonschema.Draft202012Validator(_schema_cli("ci-status")).iter_errors(doc))
