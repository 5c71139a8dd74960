"""The server's OpenAPI document is true: schemathesis generates requests from it (seeded and
bounded) against a real server on a tiny model; every answer conforms to the document (status
codes, content types, headers, bodies) and none is a 5xx. Not checked: that every request the
schema allows is accepted (positive_data_acceptance): a prompt's token ids past the vocabulary,
or a prompt and max_tokens past the context, are 400s no static schema can express."""

from __future__ import annotations

import pytest

schemathesis = pytest.importorskip("schemathesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from schemathesis.specs.openapi.checks import positive_data_acceptance  # noqa: E402

from server_helpers import ServerProcess  # noqa: E402

EXAMPLES = 30  # per operation


@pytest.fixture(scope="module")
def server(tiny_tok):
    srv = ServerProcess("--model", str(tiny_tok[1]), "--num-blocks", "64", "--max-model-len", "128",
                        "--max-num-seqs", "8")
    yield srv
    srv.stop()


def test_every_answer_conforms_to_the_openapi_document(server):
    schema = schemathesis.openapi.from_url(server.url + "/openapi.json")
    failures = []
    for result in schema.get_all_operations():
        op = result.ok()

        @given(case=op.as_strategy())
        @settings(max_examples=EXAMPLES, derandomize=True, deadline=None, suppress_health_check=list(HealthCheck),
                  database=None)
        def check(case):
            case.call_and_validate(timeout=60, excluded_checks=[positive_data_acceptance])

        try:
            check()
        except Exception as e:  # noqa: BLE001 - gathered: every operation is tried
            failures.append(f"{op.label}: {str(e)[:2000]}")
    assert not failures, "\n\n".join(failures)
