"""``POST /feedback``: the true label of an earlier prediction, one or many at a time."""

from __future__ import annotations

import re

from fastapi import APIRouter, Request
from pydantic import BaseModel, Field

from service.dataplane import DataPlane, track_request
from service.errors import InvalidInputError, NotEnabledError, TextTooLongError
from tuneloop.events.schemas import FeedbackEvent

router = APIRouter()
REQUEST_ID = re.compile(r"^[0-9a-f]{32}$")
MAX_BATCH = 1000


class FeedbackItem(BaseModel):
    request_id: str = Field(description="the request_id a prediction returned")
    label: str = Field(description="the true label, one of the served model's labels")
    source: str = Field("api", max_length=200, description="who labelled it: an annotator, a user, …")
    text: str | None = Field(None, description="the text that was classified: needed to learn from this "
                             "feedback where predictions are logged without their text (kafka.log_inputs)")


class FeedbackBatch(BaseModel):
    feedback: list[FeedbackItem] = Field(min_length=1, max_length=MAX_BATCH)


class FeedbackAccepted(BaseModel):
    accepted: int


def validate_feedback(items: list[FeedbackItem], labels: list[str], max_text_chars: int) -> None:
    for i, item in enumerate(items):
        where = f"feedback[{i}]" if len(items) > 1 else "feedback"
        if not REQUEST_ID.match(item.request_id):
            raise InvalidInputError(f"{where}: malformed request_id {item.request_id[:80]!r}; "
                                    "expected the 32 hex characters a prediction returned")
        if item.label not in labels:
            raise InvalidInputError(f"{where}: unknown label {item.label[:80]!r}; the served model's labels are {labels}")
        if item.text is not None and not item.text.strip():
            raise InvalidInputError(f"{where}: text is empty or only whitespace; leave it out instead")
        if item.text is not None and len(item.text) > max_text_chars:
            raise TextTooLongError(f"{where}: text has {len(item.text)} characters; the limit is {max_text_chars}")


@router.post("/feedback", status_code=202, responses={400: {"model": dict}, 404: {"model": dict}})
async def post_feedback(request: Request, body: FeedbackItem | FeedbackBatch) -> FeedbackAccepted:
    plane: DataPlane = request.app.state.dataplane
    events = request.app.state.events
    with track_request("/feedback"):
        items = body.feedback if isinstance(body, FeedbackBatch) else [body]
        served = plane.model()
        validate_feedback(items, served.labels, plane.settings.max_text_chars)
        if events is None:
            raise NotEnabledError("feedback is not recorded here: the event log is off (kafka.enabled=false)")
        for item in items:
            events.publish_feedback(FeedbackEvent(request_id=item.request_id, label=item.label, source=item.source,
                                                  model_name=served.model_name, text=item.text))
        return FeedbackAccepted(accepted=len(items))
