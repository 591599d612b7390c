"""Shapes every route module shares: the camelCase model bases, the delete answer,
page parameters and timestamp conversion."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

from fastapi import Query
from google.protobuf import timestamp_pb2
from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel


class Resource(BaseModel):
    """Base of response bodies: camelCase field names, every field present."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True)


class RequestBody(BaseModel):
    """Base of request bodies: camelCase names, strict types, unknown fields refused."""

    model_config = ConfigDict(alias_generator=to_camel, extra="forbid", strict=True)


class Deleted(Resource):
    """The answer to every delete."""

    id: str = Field(description="The ID of the deleted resource.")
    deleted: bool = Field(True, description="Always true.")


PageLimit = Annotated[int, Query(ge=1, le=100, description="Page size, 1-100.")]
PageToken = Annotated[
    str | None,
    Query(alias="pageToken", description="`nextPageToken` of the previous page."),
]


def time_of(ts: timestamp_pb2.Timestamp) -> datetime:
    """Converts a protobuf timestamp to an aware UTC datetime."""
    return ts.ToDatetime(tzinfo=UTC)
