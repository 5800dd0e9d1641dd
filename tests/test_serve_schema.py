"""Property-based requests generated from the server's own OpenAPI schema (schemathesis): no 5xx, ever."""

from __future__ import annotations

import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error

from nnrecipe.deploy.serve import ServeConfig, create_app

KEY = "schema-key"


def test_no_request_the_schema_allows_causes_a_server_error(trained_digits_run):
    app = create_app(ServeConfig(run_dir=trained_digits_run.dir, api_keys=[KEY], max_batch=8))
    schema = schemathesis.openapi.from_asgi("/openapi.json", app, headers={"Authorization": f"Bearer {KEY}"})
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {op.path for op in operations} >= {"/v1/predict", "/v1/model", "/healthz", "/readyz", "/metrics"}
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
        def check(case):
            for headers in ({"Authorization": f"Bearer {KEY}"}, {}, {"Authorization": "Bearer wrong"}):
                case.call_and_validate(headers=headers, checks=[not_a_server_error])

        check()
