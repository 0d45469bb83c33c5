"""Schema-driven fuzzing of the OpenAPI spec with schemathesis: no generated request may produce a 5xx.

Runs against the live uvicorn server. (schemathesis's own pytest loader does not
support this pytest release, so the operations are driven with hypothesis here.)
"""

from __future__ import annotations

import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error

from .conftest import Server


def test_no_server_errors(server: Server) -> None:
    schema = schemathesis.openapi.from_url(f"{server.url}/openapi.json")
    operations = [r.ok() for r in schema.get_all_operations()]
    assert len(operations) >= 14
    for op in operations:
        @given(case=op.as_strategy())
        @settings(max_examples=15, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        def run(case) -> None:  # type: ignore[no-untyped-def]
            if case.method.upper() == "DELETE":  # never delete the shared fixtures' real items
                case.path_parameters = {k: f"fuzz-{v}" for k, v in (case.path_parameters or {}).items()}
            case.call_and_validate(base_url=server.url, checks=[not_a_server_error])

        run()
