"""The OpenAPI 3.1 description of the service, built from the same pydantic models it validates with."""

from __future__ import annotations

from typing import Any

from webhook.model.schema import InferenceRequest, PredictOut

_REF = "#/components/schemas/{model}"

# The examples /docs starts "Try it out" from: what examples/deployment.yaml reads as, and a
# multi-document YAML (a Deployment, a CronJob, and a ConfigMap that is skipped, with why).
INFERENCE_REQUEST_EXAMPLE: dict[str, Any] = {
    "namespace": "shop", "workload_kind": "Deployment", "workload_name": "web", "replicas": 3,
    "labels": {"app.kubernetes.io/name": "web"}, "sidecar_count": 1,
    "containers": [
        {"name": "log-shipper", "image": "fluent/fluent-bit:3.1", "req_cpu_mcpu": 50, "req_mem_mib": 64,
         "lim_mem_mib": 128, "native_sidecar": True},
        {"name": "nginx", "image": "nginx:1.27", "req_cpu_mcpu": 500, "req_mem_mib": 256, "lim_cpu_mcpu": 1000,
         "lim_mem_mib": 512},
    ],
}
YAML_EXAMPLE = """\
apiVersion: apps/v1
kind: Deployment
metadata: {name: web, namespace: shop}
spec:
  replicas: 3
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers:
        - name: nginx
          image: nginx:1.27
          resources:
            requests: {cpu: 500m, memory: 256Mi}
            limits: {cpu: "1", memory: 512Mi}
---
apiVersion: batch/v1
kind: CronJob
metadata: {name: nightly-report, namespace: shop}
spec:
  schedule: "0 2 * * *"
  jobTemplate:
    spec:
      activeDeadlineSeconds: 1800
      template:
        spec:
          restartPolicy: OnFailure
          containers:
            - name: report
              image: python:3.12
              resources:
                requests: {cpu: "2", memory: 1Gi}
---
apiVersion: v1
kind: ConfigMap
metadata: {name: settings, namespace: shop}
data: {mode: fast}
"""


def _schema(model: Any, components: dict[str, Any]) -> dict[str, Any]:
    schema = model.model_json_schema(ref_template=_REF)
    components.update(schema.pop("$defs", {}))
    components[model.__name__] = schema
    return {"$ref": _REF.format(model=model.__name__)}


def _json(schema: dict[str, Any]) -> dict[str, Any]:
    return {"content": {"application/json": {"schema": schema}}}


def openapi_document(debug_endpoints: bool = True) -> dict[str, Any]:
    components: dict[str, Any] = {
        "Error": {
            "type": "object",
            "required": ["error"],
            "properties": {"error": {"type": "string"}},
            "additionalProperties": True,
        },
        "AdmissionReviewRequest": {
            "type": "object",
            "required": ["apiVersion", "kind", "request"],
            "properties": {
                "apiVersion": {"const": "admission.k8s.io/v1"},
                "kind": {"const": "AdmissionReview"},
                "request": {
                    "type": "object",
                    "required": ["uid"],
                    "properties": {"uid": {"type": "string", "minLength": 1}},
                },
            },
        },
        "AdmissionReviewResponse": {
            "type": "object",
            "required": ["apiVersion", "kind", "response"],
            "properties": {
                "apiVersion": {"const": "admission.k8s.io/v1"},
                "kind": {"const": "AdmissionReview"},
                "response": {
                    "type": "object",
                    "required": ["uid", "allowed"],
                    "properties": {
                        "uid": {"type": "string"},
                        "allowed": {"type": "boolean"},
                        "patchType": {"const": "JSONPatch"},
                        "patch": {"type": "string", "contentEncoding": "base64"},
                        "warnings": {"type": "array", "items": {"type": "string"}},
                        "status": {"type": "object"},
                        "auditAnnotations": {"type": "object", "additionalProperties": {"type": "string"}},
                    },
                },
            },
        },
        "Skipped": {
            "type": "object",
            "required": ["document", "reason"],
            "properties": {"document": {"type": "integer"}, "item": {"type": ["integer", "null"]}, "reason": {"type": "string"}},
        },
    }
    request_ref = _schema(InferenceRequest, components)
    out_ref = _schema(PredictOut, components)
    error = _json({"$ref": "#/components/schemas/Error"})
    review_in = _json({"$ref": "#/components/schemas/AdmissionReviewRequest"})
    review_out = _json({"$ref": "#/components/schemas/AdmissionReviewResponse"})
    skipped = {"type": "array", "items": {"$ref": "#/components/schemas/Skipped"}}
    yaml_body = {"required": True, "content": {"text/plain": {
        "schema": {"type": "string", "minLength": 1},
        "examples": {"shop": {"summary": "a Deployment, a CronJob and a ConfigMap (skipped)", "value": YAML_EXAMPLE}},
    }}}
    admission = {
        "requestBody": {"required": True, **review_in},
        "responses": {
            "200": {"description": "an AdmissionReview v1 answer with the request's uid", **review_out},
            "400": {"description": "not an AdmissionReview v1", **error},
            "413": {"description": "body over the size limit", **error},
        },
    }
    paths: dict[str, Any] = {
        "/mutate": {"post": {"summary": "annotate a workload with its predicted power", **admission}},
        "/validate": {"post": {"summary": "hold a workload against its energy budgets", **admission}},
        "/healthz": {"get": {"summary": "liveness", "responses": {"200": {"description": "alive"}}}},
        "/readyz": {"get": {"summary": "readiness", "responses": {"200": {"description": "ready"}, "503": {"description": "not ready"}}}},
        "/metrics": {"get": {"summary": "Prometheus metrics", "responses": {"200": {"description": "text exposition format"}}}},
    }
    if debug_endpoints:
        paths["/predict"] = {
            "post": {
                "summary": "predict for one InferenceRequest",
                "requestBody": {"required": True, "content": {"application/json": {
                    "schema": request_ref,
                    "examples": {"web": {"summary": "a Deployment of 3 pods with a native sidecar",
                                         "value": INFERENCE_REQUEST_EXAMPLE}},
                }}},
                "responses": {
                    "200": {"description": "the prediction", **_json(out_ref)},
                    "400": {"description": "not JSON", **error},
                    "413": {"description": "body over the size limit", **error},
                    "422": {"description": "invalid InferenceRequest; problems name the fields", **error},
                },
            }
        }
        for path, key, item in (
            ("/infer/from-yaml", "requests", {"type": "object"}),
            ("/predict/from-yaml", "predictions", {"type": "object"}),
        ):
            paths[path] = {
                "post": {
                    "summary": f"{key} for every workload in YAML documents (many, or kind: List)",
                    "requestBody": yaml_body,
                    "responses": {
                        "200": {
                            "description": f"{key}, and the documents skipped with why",
                            **_json({
                                "type": "object",
                                "required": [key, "skipped"],
                                "properties": {key: {"type": "array", "items": item}, "skipped": skipped},
                            }),
                        },
                        "400": {"description": "invalid YAML or not UTF-8; says where", **error},
                        "413": {"description": "body over the size limit", **error},
                        "422": {"description": "a workload cannot be read; errors name the fields", **error},
                    },
                }
            }
    return {
        "openapi": "3.1.0",
        "info": {"title": "EnergetiScope", "version": _version()},
        "paths": paths,
        "components": {"schemas": components},
    }


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("energetiscope")
    except PackageNotFoundError:
        return "0+unknown"
