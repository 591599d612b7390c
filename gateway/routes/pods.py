"""``/v1/pods…`` (seeds 000-002; DESIGN §4 Pods)."""

from __future__ import annotations

from datetime import datetime

from fastapi import APIRouter, Path
from google.protobuf import field_mask_pb2
from mailplane.pods.v1 import pods_pb2
from pydantic import Field

from gateway.deps import CallerCall
from gateway.errors import documented
from gateway.routes.common import Deleted, PageLimit, PageToken, RequestBody, Resource, time_of

router = APIRouter(prefix="/v1/pods", tags=["pods"])
PodRef = Path(description="The pod's ID or clientId.")


class Pod(Resource):
    """A pod: one tenant of the account."""

    id: str = Field(description="The pod's ID, `pod_…`.")
    client_id: str | None = Field(description="Your own identifier, unique in the account.")
    name: str | None = Field(description="A label for people.")
    is_default: bool = Field(description="Whether this is the account's default pod.")
    created_at: datetime
    updated_at: datetime


class PodList(Resource):
    """One page of pods: the default pod first, then oldest first."""

    pods: list[Pod]
    next_page_token: str | None = Field(description="Token of the next page; null on the last.")


class CreatePodBody(RequestBody):
    """The fields of a new pod."""

    client_id: str | None = Field(None, max_length=255, description="Your own identifier.")
    name: str | None = Field(None, max_length=255, description="A label for people.")


class UpdatePodBody(RequestBody):
    """Fields to change: an absent field is unchanged, a field sent as null is cleared."""

    client_id: str | None = Field(None, max_length=255)
    name: str | None = Field(None, max_length=255)


def pod_of(message: pods_pb2.Pod) -> Pod:
    """Converts a pod message to its REST shape."""
    return Pod(
        id=message.id,
        client_id=message.client_id if message.HasField("client_id") else None,
        name=message.name if message.HasField("name") else None,
        is_default=message.is_default,
        created_at=time_of(message.create_time),
        updated_at=time_of(message.update_time),
    )


@router.post(
    "",
    status_code=201,
    response_model=Pod,
    responses=documented("client_id_taken"),
    summary="Create a pod",
)
async def create_pod(call: CallerCall, body: CreatePodBody | None = None) -> Pod:
    """Creates a pod; `clientId` must be unique in the account."""
    body = body or CreatePodBody()
    pod = pods_pb2.Pod()
    if body.client_id is not None:
        pod.client_id = body.client_id
    if body.name is not None:
        pod.name = body.name
    created = await call.stubs.pods.CreatePod(
        pods_pb2.CreatePodRequest(pod=pod), metadata=call.metadata, timeout=call.timeout
    )
    return pod_of(created)


@router.get("", response_model=PodList, responses=documented(), summary="List pods")
async def list_pods(
    call: CallerCall, limit: PageLimit = 50, page_token: PageToken = None
) -> PodList:
    """Lists the account's pods: the default pod first, then oldest first."""
    response = await call.stubs.pods.ListPods(
        pods_pb2.ListPodsRequest(page_size=limit, page_token=page_token or ""),
        metadata=call.metadata,
        timeout=call.timeout,
    )
    return PodList(
        pods=[pod_of(p) for p in response.pods], next_page_token=response.next_page_token or None
    )


@router.get(
    "/{pod}", response_model=Pod, responses=documented("pod_not_found"), summary="Get a pod"
)
async def get_pod(call: CallerCall, pod: str = PodRef) -> Pod:
    """Gets a pod by ID or clientId."""
    found = await call.stubs.pods.GetPod(
        pods_pb2.GetPodRequest(pod_id=pod), metadata=call.metadata, timeout=call.timeout
    )
    return pod_of(found)


@router.patch(
    "/{pod}",
    response_model=Pod,
    responses=documented("pod_not_found", "client_id_taken", "pod_busy"),
    summary="Update a pod",
)
async def update_pod(call: CallerCall, body: UpdatePodBody, pod: str = PodRef) -> Pod:
    """Changes `clientId` and/or `name`; `null` clears a field, an absent field stays."""
    changes = pods_pb2.Pod()
    paths = []
    for field in ("client_id", "name"):
        if field in body.model_fields_set:
            paths.append(field)
            value = getattr(body, field)
            if value is not None:
                setattr(changes, field, value)
    updated = await call.stubs.pods.UpdatePod(
        pods_pb2.UpdatePodRequest(
            pod_id=pod, pod=changes, update_mask=field_mask_pb2.FieldMask(paths=paths)
        ),
        metadata=call.metadata,
        timeout=call.timeout,
    )
    return pod_of(updated)


@router.delete(
    "/{pod}",
    response_model=Deleted,
    responses=documented(
        "pod_not_found", "default_pod", "pod_not_empty", "pod_has_domains", "pod_busy"
    ),
    summary="Delete a pod",
)
async def delete_pod(call: CallerCall, pod: str = PodRef) -> Deleted:
    """Deletes an empty, non-default pod."""
    response = await call.stubs.pods.DeletePod(
        pods_pb2.DeletePodRequest(pod_id=pod), metadata=call.metadata, timeout=call.timeout
    )
    return Deleted(id=response.pod_id)
