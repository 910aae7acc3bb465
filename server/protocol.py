"""Wire formats: the OpenAI request body, the job a worker runs, and the worker's messages."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr, field_validator

MAX_PROMPT_CHARS = 32_000
MAX_SEED = 2**63 - 1
OutputFormat = Literal["png", "jpeg", "webp"]


class ImageGenerationRequest(BaseModel):
    """`POST /v1/images/generations`. Unknown keys are accepted so newer SDKs keep working."""

    model_config = ConfigDict(extra="allow")

    prompt: Annotated[StrictStr, Field(min_length=1, max_length=MAX_PROMPT_CHARS)]
    model: StrictStr | None = None
    n: Annotated[StrictInt, Field(ge=1, le=10)] = 1
    size: StrictStr = "auto"
    quality: StrictStr = "auto"
    response_format: Literal["b64_json", "url"] = "b64_json"
    output_format: OutputFormat = "png"
    output_compression: Annotated[StrictInt, Field(ge=0, le=100)] | None = None
    background: Literal["transparent", "opaque", "auto"] = "auto"
    moderation: Literal["low", "auto"] | None = None
    style: Literal["vivid", "natural"] | None = None
    user: StrictStr | None = None
    safety_identifier: StrictStr | None = None
    stream: StrictBool = False
    partial_images: Annotated[StrictInt, Field(ge=0, le=3)] = 0
    # Extensions (sent through the SDK's extra_body).
    seed: Annotated[StrictInt, Field(ge=0, le=MAX_SEED)] | None = None
    negative_prompt: Annotated[StrictStr, Field(max_length=MAX_PROMPT_CHARS)] | None = None
    num_inference_steps: Annotated[StrictInt, Field(ge=1)] | None = None
    guidance_scale: Annotated[float, Field(ge=0.0, le=30.0, strict=True)] | None = None

    @field_validator("background")
    @classmethod
    def _opaque_only(cls, value: str) -> str:
        if value == "transparent":
            raise ValueError("diffusion output is opaque; 'transparent' is not supported")
        return value


class GenerationCancelledError(Exception):
    """Every request of a group was cancelled (client gone or deadline passed); stop between steps."""


@dataclass(frozen=True)
class Job:
    """One admitted request, fully resolved by the API process; a worker runs it as given."""

    uid: str
    model: str
    tier: str
    schedule_digest: str
    prompt: str
    negative_prompt: str | None
    seeds: tuple[int, ...]
    width: int
    height: int
    steps: int
    guidance_scale: float
    output_format: str
    output_compression: int | None
    partial_images: int
    enqueued_at: float  # time.monotonic(), comparable across processes on one host
    deadline: float  # time.monotonic()

    @property
    def n(self) -> int:
        return len(self.seeds)

    def group_key(self) -> tuple[Any, ...]:
        """Requests that can share one pipeline call."""
        return (self.model, self.schedule_digest, self.width, self.height, self.steps, self.guidance_scale)


# Worker → API process messages (plain dicts cross the process boundary):
#   {"event": "started", "pid": int}
#   {"event": "partial", "image_index": i, "partial_index": k, "b64": str}
#   {"event": "image", "image_index": i, "b64": str}
#   {"event": "done", "info": WorkerReport as dict}
#   {"event": "error", "status": int, "message": str, "code": str | None}


@dataclass
class WorkerReport:
    tier: str
    schedule: str
    schedule_digest: str
    steps: int
    guidance_scale: float
    seeds: list[int]
    computed: int
    reused: int
    skipped: int
    batch_images: int
    prompt_tokens: int
    queue_ms: float
    generation_ms: float
