"""Property-based tests of the whole HTTP API from its own /openapi.json (schemathesis),
against a real server on the tiny model: no 5xx, no crash, and every response matches what
the schema declares (status code, content type, headers, body), for valid and invalid data.

Schemathesis's engine runs from Python, as its CLI would: schema examples, the coverage
phase (boundary and wrong-type values for every parameter), random fuzzing and stateful
sequences (create a job, then read, cancel, follow it), with every check but two:
``positive_data_acceptance`` (ranges are the shared validation's, from the settings, not
the schema's, so a schema-valid width of 17 is still refused, with a 400 naming it) and
``use_after_free`` (DELETE cancels a job; its record stays, by design).

The server (``edge_server``) has an API key, a queue bound of 4 (floods end in a declared
429) and small limits, so valid generations finish quickly. The two SSE routes are fuzzed
for their status codes only (a stream that opens does not end by itself). Examples are
bounded (``STEADYGEN_FUZZ_EXAMPLES`` per operation, default 25: a minute or two here);
``STEADYGEN_FUZZ_EXAMPLES=300`` searches deeper.
"""

from __future__ import annotations

import os
from collections import Counter
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.engine import Status, events

from tests.reliability.conftest import EDGE_KEY, drain
from tests.server.conftest import ServerProc

FUZZ_EXAMPLES = int(os.environ.get("STEADYGEN_FUZZ_EXAMPLES", "25"))
FUZZ_SEED = int(os.environ.get("STEADYGEN_FUZZ_SEED", "20261126"))
STREAMS = ["/v1/jobs/{job_id}/events", "/v1/telemetry/stream"]


def load_schema(srv: ServerProc) -> Any:
    config = schemathesis.Config.from_dict({
        "seed": FUZZ_SEED,
        "headers": {"Authorization": f"Bearer {EDGE_KEY}"},
        "request-timeout": 120,
        "workers": 1,
        "generation": {"max-examples": FUZZ_EXAMPLES, "database": "none"},
        "checks": {
            "positive_data_acceptance": {"enabled": False},
            # DELETE /v1/jobs/{id} cancels a job and keeps its record (GET then shows it
            # cancelled), so a 200 after the DELETE is right, not a use after free.
            "use_after_free": {"enabled": False},
        },
    })
    return schemathesis.openapi.from_url(srv.base_url + "/openapi.json", config=config,
                                         headers=srv.headers())  # with a key, so is the schema


def describe(event: events.ScenarioFinished) -> list[str]:
    out = []
    for checks in event.recorder.checks.values():
        for check in checks:
            if check.status is not Status.SUCCESS and check.failure_info is not None:
                failure = check.failure_info.failure
                out.append(f"{event.label}: {check.name}: {failure.title}: {failure.message}\n"
                           f"  {check.failure_info.code_sample}")
    return out


@pytest.fixture(scope="module")
def fuzz_run(edge_server: ServerProc) -> dict[str, Any]:
    """One schemathesis run over every operation but the streams; what it found."""
    schema = load_schema(edge_server).exclude(path=STREAMS)
    failures: list[str] = []
    errors: list[str] = []
    statuses: Counter[int] = Counter()
    operations: set[str] = set()
    for event in schemathesis.engine.from_schema(schema).execute():
        if isinstance(event, events.ScenarioFinished):
            operations.add(str(event.label))
            for interaction in event.recorder.interactions.values():
                if interaction.response is not None:
                    statuses[interaction.response.status_code] += 1
            if event.status is Status.FAILURE:
                failures += describe(event) or [f"{event.label}: failed"]
        elif isinstance(event, events.NonFatalError):
            errors.append(f"{event.label}: {event.info.title}: {event.info.message}")
        elif isinstance(event, events.FatalError):
            errors.append(f"fatal: {event.exception!r}")
    drain(edge_server)
    return {"failures": failures, "errors": errors, "statuses": statuses,
            "operations": operations}


def test_every_response_conforms_and_none_is_a_server_error(
    fuzz_run: dict[str, Any], edge_server: ServerProc
) -> None:
    assert not fuzz_run["errors"], "\n".join(fuzz_run["errors"])
    assert not fuzz_run["failures"], "\n".join(dict.fromkeys(fuzz_run["failures"]))
    server_errors = {s: n for s, n in fuzz_run["statuses"].items() if s >= 500}
    assert not server_errors, server_errors
    assert edge_server.alive(), edge_server.log_tail()


def test_the_fuzzer_reached_every_operation_and_both_outcomes(
    fuzz_run: dict[str, Any], edge_server: ServerProc, figures: dict[str, Any]
) -> None:
    """Guards the test above against passing vacuously: every operation in the schema was
    exercised, jobs were accepted and refused, and the server still runs a job."""
    spec = edge_server.request("GET", "/openapi.json").json()
    expected = {f"{m.upper()} {p}" for p, ops in spec["paths"].items() for m in ops
                if p not in STREAMS}
    assert expected <= fuzz_run["operations"], expected - fuzz_run["operations"]
    statuses = fuzz_run["statuses"]
    figures["schema_fuzzing"] = {
        "examples_per_operation": FUZZ_EXAMPLES, "seed": FUZZ_SEED,
        "operations": len(expected), "requests": sum(statuses.values()),
        "statuses": {str(k): v for k, v in sorted(statuses.items())},
    }
    assert sum(statuses.values()) >= 5 * FUZZ_EXAMPLES, statuses
    assert statuses[200] and statuses[202] and statuses[400], statuses
    job = edge_server.submit(prompt="after the fuzzing", width=64, height=64, steps=1)
    assert edge_server.wait_done(job["id"])["state"] == "succeeded"


def test_streams_answer_without_server_errors(edge_server: ServerProc) -> None:
    """The SSE routes with fuzzed parameters: a stream that opens (200) is closed at once;
    anything else is a 4xx that the schema declares."""
    schema = load_schema(edge_server)
    seen: Counter[int] = Counter()
    for path in STREAMS:
        fuzz_stream(edge_server, schema[path]["GET"], seen)
    assert edge_server.alive(), edge_server.log_tail()
    assert seen[200] or seen[404], seen  # some were well-formed enough to reach the route


def fuzz_stream(srv: ServerProc, operation: Any, seen: Counter[int]) -> None:
    declared = set(operation.definition.raw["responses"])

    @given(case=operation.as_strategy(schemathesis.GenerationMode.NEGATIVE)
           | operation.as_strategy())
    @settings(max_examples=max(10, FUZZ_EXAMPLES), deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    def check(case: Any) -> None:
        kw = case.as_transport_kwargs(base_url=srv.base_url)
        with httpx.stream(kw["method"], kw["url"], params=kw.get("params"),
                          headers=kw.get("headers"), timeout=30.0) as r:
            if r.status_code != 200:
                r.read()
            seen[r.status_code] += 1
            assert r.status_code < 500, (r.status_code, kw["url"], r.text)
            assert str(r.status_code) in declared, (r.status_code, sorted(declared))

    check()
