"""The OpenAPI document a platform generates its client from, linted as spectral's OpenAPI rules would: valid
OpenAPI 3 (openapi-spec-validator), and every operation named, described, tagged, with described parameters,
declared errors in one shape (ErrorOut; a 422 is FastAPI's list of field errors), named response schemas and an
example for every JSON body."""

from __future__ import annotations

import re

import pytest
from openapi_spec_validator import validate

from layercut.api.main import create_app
from layercut.contracts.kinds import STAGE_KINDS
from layercut.settings import Settings

METHODS = ("get", "post", "put", "patch", "delete")
OPERATION_ID = re.compile(r"^[a-z][a-z0-9_]{2,31}$")


@pytest.fixture(scope="module")
def spec(tmp_path_factory) -> dict:
    folder = tmp_path_factory.mktemp("contract")
    app = create_app(Settings(database_url=f"sqlite:///{folder / 'db.sqlite'}"), run_embedded_jobs=False)
    return app.openapi()


def operations(spec: dict) -> list[tuple[str, str, dict]]:
    return [
        (method.upper(), path, operation)
        for path, item in spec["paths"].items()
        for method, operation in item.items()
        if method in METHODS
    ]


def resolve(spec: dict, schema: dict) -> dict:
    ref = schema.get("$ref")
    return spec["components"]["schemas"][ref.rsplit("/", 1)[1]] if ref else schema


def test_the_document_is_valid_openapi(spec) -> None:
    validate(spec)  # raises on the first violation of the OpenAPI 3.1 schema
    assert spec["info"]["title"] and spec["info"]["version"]


def test_every_operation_is_named_described_and_tagged(spec) -> None:
    problems = []
    ids = [operation.get("operationId", "") for _, _, operation in operations(spec)]
    for method, path, operation in operations(spec):
        where = f"{method} {path}"
        if not OPERATION_ID.match(operation.get("operationId", "")):
            problems.append(f"{where}: operationId {operation.get('operationId')!r} is not short snake_case")
        for field in ("summary", "description", "tags"):
            if not operation.get(field):
                problems.append(f"{where}: no {field}")
        problems += [
            f"{where}: parameter {p['name']} is not described"
            for p in operation.get("parameters", [])
            if not p.get("description")
        ]
    assert problems == [] and len(ids) == len(set(ids)), problems


def test_every_error_is_declared_in_one_shape(spec) -> None:
    problems = []
    for method, path, operation in operations(spec):
        for code, response in operation["responses"].items():
            if not response.get("description"):
                problems.append(f"{method} {path} {code}: no description")
            if path.startswith("/v1") and code[0] in "45":
                schema = response.get("content", {}).get("application/json", {}).get("schema", {})
                shape = "HTTPValidationError" if code == "422" else "ErrorOut"  # FastAPI's list of field errors
                if schema.get("$ref") != f"#/components/schemas/{shape}":
                    problems.append(f"{method} {path} {code}: not an {shape}")
        if path.startswith("/v1") and not {"401", "422"} <= set(operation["responses"]) and "{" in path:
            problems.append(f"{method} {path}: 401 or 422 undeclared")
    assert problems == []


def test_answers_have_named_schemas_and_bodies_have_examples(spec) -> None:
    problems = []
    for method, path, operation in operations(spec):
        for code, response in operation["responses"].items():
            schema = response.get("content", {}).get("application/json", {}).get("schema")
            if code.startswith("2") and schema is not None:
                named = schema.get("$ref") or schema.get("items", {}).get("$ref")
                if not named and schema != {}:
                    problems.append(f"{method} {path} {code}: an unnamed answer schema")
        body = operation.get("requestBody", {}).get("content", {})
        if "application/json" in body:
            media = body["application/json"]
            target = resolve(spec, media.get("schema", {}))
            if not (media.get("examples") or media.get("example") or target.get("examples") or target.get("example")):
                problems.append(f"{method} {path}: a JSON body without an example")
        if "multipart/form-data" in body:
            form = resolve(spec, body["multipart/form-data"]["schema"])
            for name, field in form.get("properties", {}).items():
                if name in ("file", "weights") and field.get("format") != "binary":
                    problems.append(f"{method} {path}: the file field {name} is not format: binary")
    assert problems == []


def test_states_and_kinds_are_enums_in_answers(spec) -> None:
    schemas = spec["components"]["schemas"]
    for name in ("JobOut", "JobSummary"):
        for field in ("status", "kind"):
            assert "enum" in resolve(spec, schemas[name]["properties"][field]), (name, field)
    assert "enum" in resolve(spec, schemas["PipelineOut"]["properties"]["status"])


def enums(node: object, where: str = "") -> list[tuple[str, dict]]:
    """Every schema with an ``enum`` in the document, with where it is."""
    found: list[tuple[str, dict]] = []
    if isinstance(node, dict):
        if isinstance(node.get("enum"), list) and len(node["enum"]) > 1:
            found.append((where, node))
        for key, value in node.items():
            found += enums(value, f"{where}/{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            found += enums(value, f"{where}/{i}")
    return found


def test_every_enum_member_gets_its_own_name_in_a_generated_client(spec) -> None:
    """Generators name enum members after their values with the non-identifier characters dropped, so values that
    differ only in those (``gradcam`` and ``gradcam++``) collapse into one member unless ``x-enum-varnames`` names
    them: a generated client then cannot read one of them back."""
    problems = []
    for where, schema in enums(spec):
        names = schema.get("x-enum-varnames") or [
            re.sub(r"[^A-Za-z0-9]+", "_", str(v)).strip("_").upper() for v in schema["enum"]
        ]
        if len(set(names)) != len(schema["enum"]):
            problems.append((where, schema["enum"]))
    assert problems == []


def test_job_params_results_and_metrics_are_typed_by_kind(spec) -> None:
    """A job's params and result are unions told apart by a tag (params by ``kind``, a result by ``stage``, which
    is the job's kind), one named schema per kind; metrics is one named schema; a pipeline's params is the request."""
    schemas = spec["components"]["schemas"]
    job = schemas["JobOut"]["properties"]
    params = job["params"]
    assert params["discriminator"]["propertyName"] == "kind" and len(params["oneOf"]) == len(STAGE_KINDS)
    result = next(option for option in job["result"]["anyOf"] if option.get("type") != "null")
    assert result["discriminator"]["propertyName"] == "stage"
    named = {ref.rsplit("/", 1)[1] for ref in result["discriminator"]["mapping"].values()}
    assert named == {f"{kind.title().replace('_', '')}JobResult" for kind in STAGE_KINDS}
    for name in named:
        assert "model_id" in schemas[name]["properties"] and schemas[name]["additionalProperties"] is False
    assert resolve(spec, next(o for o in job["metrics"]["anyOf"] if "$ref" in o))["title"] == "JobMetrics"
    assert schemas["PipelineOut"]["properties"]["params"]["$ref"].endswith("/PipelineCreate")
