"""The OpenAI Images wire formats: the request body, the JSON response and the stream's events."""

from __future__ import annotations

from typing import Annotated, Literal, TypedDict

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr, field_validator
from starlette.responses import Response

from ecad.tiers import Tier

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


# -- responses ------------------------------------------------------------------------------------


class _Wire(BaseModel):
    model_config = ConfigDict(frozen=True)


def _absent(value: object) -> bool:
    return value is None


class ImageData(_Wire):
    """One image: `b64_json` or `url`, the other left out (as OpenAI sends it)."""

    b64_json: str | None = Field(default=None, exclude_if=_absent)
    url: str | None = Field(default=None, exclude_if=_absent)


class InputTokensDetails(_Wire):
    text_tokens: int
    image_tokens: int = 0


class Usage(_Wire):
    input_tokens: int
    input_tokens_details: InputTokensDetails
    output_tokens: int = 0
    total_tokens: int

    @classmethod
    def of_prompt(cls, tokens: int) -> Usage:
        """Text tokens the encoder read; images are not billed as tokens here."""
        return cls(
            input_tokens=tokens,
            input_tokens_details=InputTokensDetails(text_tokens=tokens),
            total_tokens=tokens,
        )


class ScheduleRef(_Wire):
    name: str
    digest: str


class CacheCounts(_Wire):
    computed: int
    reused: int
    skipped: int


class EcadExtension(_Wire):
    """`x_ecad`: what the server did — the tier and schedule actually used, seeds, cache counts, times."""

    model: str
    tier: Tier
    requested_quality: str
    schedule: ScheduleRef
    macs_ratio: float
    seeds: tuple[int, ...]
    steps: int
    guidance_scale: float
    cache: CacheCounts
    batch_images: int
    queue_ms: float
    generation_ms: float
    total_ms: float


class ImageFacts(TypedDict):
    """What OpenAI echoes about the images of a response or an event (the fields of `_EchoedFacts`)."""

    output_format: OutputFormat
    quality: str
    size: str


class _EchoedFacts(_Wire):
    background: Literal["opaque"] = "opaque"
    output_format: OutputFormat
    quality: str  # an OpenAI-legal value (`Tier.openai_quality`)
    size: str


class ImagesResponse(_EchoedFacts):
    created: int
    data: list[ImageData]
    usage: Usage
    x_ecad: EcadExtension


class PartialImageEvent(_EchoedFacts):
    type: Literal["image_generation.partial_image"] = "image_generation.partial_image"
    b64_json: str
    created_at: int
    partial_image_index: int
    image_index: int  # an extension: which of the request's n images


class CompletedEvent(_EchoedFacts):
    type: Literal["image_generation.completed"] = "image_generation.completed"
    b64_json: str
    created_at: int
    image_index: int
    usage: Usage
    x_ecad: EcadExtension


class TierInfo(_Wire):
    schedule: str
    digest: str
    macs_ratio: float


class SizeLimits(_Wire):
    min_side: int
    max_side: int
    multiple: int


class ModelExtension(_Wire):
    """`x_ecad` of a model object: what a client may ask of it."""

    family: str
    steps: int
    default_size: str
    render_size: str | None
    sizes: SizeLimits
    tiers: dict[Tier, TierInfo]


class ModelObject(_Wire):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "ecad-server"
    x_ecad: ModelExtension


class ModelList(_Wire):
    object: Literal["list"] = "list"
    data: list[ModelObject]


def render(model: BaseModel) -> str:
    """The one serialisation of a response body or event."""
    return model.model_dump_json()


def json_response(model: BaseModel, headers: dict[str, str] | None = None) -> Response:
    return Response(render(model), media_type="application/json", headers=headers)


def sse_frame(event: PartialImageEvent | CompletedEvent) -> str:
    return f"event: {event.type}\ndata: {render(event)}\n\n"
