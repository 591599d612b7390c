"""``/v1/pods…`` (seeds 000-002; DESIGN §4 Pods)."""

from __future__ import annotations

from mailplane.pods.v1 import pods_pb2

from gateway.operations import Operation, rpc_of

_POD = {"pod": "pod_id"}
_EXAMPLE = {
    "id": "pod_01JD5B6Q8Z3Y7X2W1V0T9S8R7Q",
    "clientId": "tenant-abc",
    "name": "Acme Corp",
    "isDefault": False,
    "createdAt": "2026-03-01T12:00:00Z",
    "updatedAt": "2026-03-01T12:00:00Z",
}


OPERATIONS = (
    Operation(
        "POST",
        "/v1/pods",
        rpc_of(pods_pb2, "PodService", "CreatePod"),
        "createPod",
        "Create a pod",
        "pods",
        body="pod",
        status=201,
        errors=("client_id_taken",),
        example=_EXAMPLE,
    ),
    Operation(
        "GET",
        "/v1/pods",
        rpc_of(pods_pb2, "PodService", "ListPods"),
        "listPods",
        "List pods",
        "pods",
        paged=True,
        example={"pods": [_EXAMPLE], "nextPageToken": None},
    ),
    Operation(
        "GET",
        "/v1/pods/{pod}",
        rpc_of(pods_pb2, "PodService", "GetPod"),
        "getPod",
        "Get a pod",
        "pods",
        path_fields=_POD,
        errors=("pod_not_found",),
        example=_EXAMPLE,
    ),
    Operation(
        "PATCH",
        "/v1/pods/{pod}",
        rpc_of(pods_pb2, "PodService", "UpdatePod"),
        "updatePod",
        "Update a pod",
        "pods",
        path_fields=_POD,
        body="pod",
        mask="update_mask",
        errors=("pod_not_found", "client_id_taken", "pod_busy"),
        example=_EXAMPLE,
    ),
    Operation(
        "DELETE",
        "/v1/pods/{pod}",
        rpc_of(pods_pb2, "PodService", "DeletePod"),
        "deletePod",
        "Delete a pod",
        "pods",
        path_fields=_POD,
        deleted=True,
        errors=("pod_not_found", "default_pod", "pod_not_empty", "pod_has_domains", "pod_busy"),
    ),
)
