"""An OpenFeature client nobody at cutover wrote, against a running `cutover serve`.

Evaluates every flag type, a targeting match, a split, a killed flag, a missing flag and a
missing targeting key through the Python OpenFeature SDK with its OFREP provider; validates
every raw OFREP response against the published openapi.yaml; and sees a kill arrive through
the change stream. Bounded in requests and time. Prints OK and exits 0, or raises.

    python ofrep_client.py OFREP_URL API_KEY ADMIN_URL ADMIN_TOKEN OPENAPI_YAML
"""
import json
import sys
import threading

import jsonschema
import referencing
import requests
import yaml
from openfeature import api
from openfeature.contrib.provider.ofrep import OFREPProvider
from openfeature.evaluation_context import EvaluationContext
from openfeature.flag_evaluation import ErrorCode, Reason

OFREP, KEY, ADMIN, TOKEN, SPEC = sys.argv[1:6]

with open(SPEC) as f:
    spec = yaml.safe_load(f)
# The spec's union of value shapes cannot hold as a `oneOf`: `codeDefaultFlag` (an object with
# no required property) accepts every answer, and an integer is a float too, so no response of
# any server could pass. It is checked as `anyOf`; everything else as written.
union = spec["components"]["schemas"]["evaluationSuccess"]["allOf"][1]
union["anyOf"] = union.pop("oneOf")
spec_resource = referencing.Resource.from_contents(spec, default_specification=referencing.jsonschema.DRAFT202012)
registry = referencing.Registry().with_resource("openapi.yaml", spec_resource)


def validate(body, schema_name):
    schema = {"$ref": f"openapi.yaml#/components/schemas/{schema_name}"}
    jsonschema.Draft202012Validator(schema, registry=registry).validate(body)


# Which schema each status of each endpoint answers with, from the spec's paths.
SINGLE = {200: "serverEvaluationSuccess", 400: "evaluationFailure", 404: "flagNotFound", 500: "generalErrorResponse"}
BULK = {200: "bulkEvaluationSuccess", 400: "bulkEvaluationFailure", 500: "generalErrorResponse"}


def raw_single(key, context):
    r = requests.post(f"{OFREP}/ofrep/v1/evaluate/flags/{key}", json={"context": context},
                      headers={"X-API-Key": KEY}, timeout=5)
    validate(r.json(), SINGLE[r.status_code])
    return r


def raw_bulk(context, etag=None):
    headers = {"X-API-Key": KEY}
    if etag:
        headers["If-None-Match"] = etag
    r = requests.post(f"{OFREP}/ofrep/v1/evaluate/flags", json={"context": context}, headers=headers, timeout=5)
    if r.status_code != 304:
        validate(r.json(), BULK[r.status_code])
    return r


def admin(method, path, body=None):
    r = requests.request(method, f"{ADMIN}{path}", json=body, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=5)
    assert r.status_code == 200, (path, r.status_code, r.text)
    return r.json()


api.set_provider(OFREPProvider(OFREP, headers_factory=lambda: {"X-API-Key": KEY}))
client = api.get_client()
user = EvaluationContext(targeting_key="user-1", attributes={"country": "DE", "app_version": "2.10.0"})

# Every type, with the values the flags give this user.
details = client.get_boolean_details("dark-mode", False, user)
assert (details.value, details.reason, details.variant) == (True, Reason.TARGETING_MATCH, "on"), details
details = client.get_string_details("banner", "none", user)
assert (details.value, details.reason) == ("red", Reason.STATIC), details
assert details.flag_metadata["owner"] == "web-team", details.flag_metadata
details = client.get_integer_details("max-items", 0, user)
assert (details.value, details.reason) == (25, Reason.STATIC), details
details = client.get_float_details("ratio", 0.0, user)
assert (details.value, details.reason) == (0.75, Reason.STATIC), details
details = client.get_object_details("limits", {}, user)
assert details.value == {"rps": 100, "burst": 20}, details

# A split: every user gets one of the variants, by a hash of their key; some get each.
seen = set()
for i in range(200):
    d = client.get_boolean_details("new-checkout", False, EvaluationContext(targeting_key=f"u{i}"))
    assert d.reason == Reason.SPLIT, d
    seen.add(d.value)
assert seen == {True, False}, seen

# Errors: the SDK returns the code default and says why.
d = client.get_boolean_details("no-such-flag", False, user)
assert (d.value, d.error_code) == (False, ErrorCode.FLAG_NOT_FOUND), d
d = client.get_boolean_details("new-checkout", False, EvaluationContext(attributes={"country": "DE"}))
assert (d.value, d.error_code) == (False, ErrorCode.TARGETING_KEY_MISSING), d

# Raw responses, validated against the spec: success, each failure, bulk and 304.
assert raw_single("dark-mode", {"targetingKey": "u", "app_version": "2.10.0"}).status_code == 200
assert raw_single("no-such-flag", {"targetingKey": "u"}).status_code == 404
assert raw_single("new-checkout", {}).status_code == 400
assert raw_single("dark-mode", {"targetingKey": 5}).status_code == 400
bulk = raw_bulk({"targetingKey": "user-1"})
assert bulk.status_code == 200, bulk.text
etag = bulk.headers["ETag"]
assert raw_bulk({"targetingKey": "user-1"}, etag).status_code == 304
assert raw_bulk({"targetingKey": "user-2"}, etag).status_code == 200
assert raw_bulk({}).status_code == 200  # the split flag fails alone
stream_uri = bulk.json()["eventStreams"][0]["endpoint"]["requestUri"]

# A kill reaches a listening client within a second, and evaluations see it.
connected = threading.Event()
heard = threading.Event()


def listen():
    with requests.get(f"{OFREP}{stream_uri}", headers={"X-API-Key": KEY}, stream=True, timeout=10) as r:
        for line in r.iter_lines(decode_unicode=True):
            if line and line.startswith(":"):
                connected.set()  # the server's greeting: subscribed
            elif line and line.startswith("data:") and json.loads(line[5:])["type"] == "refetchEvaluation":
                heard.set()
                return


listener = threading.Thread(target=listen, daemon=True)
listener.start()
assert connected.wait(5), "the change stream did not open"
admin("POST", "/v1/flags/dark-mode/kill", {"reason": "errors for flagged users"})
assert heard.wait(5), "no refetchEvaluation after the kill"
d = client.get_boolean_details("dark-mode", True, user)
assert (d.value, d.reason) == (False, Reason.DISABLED), d
assert raw_bulk({"targetingKey": "user-1"}, etag).status_code == 200, "a kill invalidates the ETag"
print("OK")
