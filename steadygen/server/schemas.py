"""Request bodies of the HTTP APIs, as pydantic models (they make the OpenAPI schema).

Types are checked here; ranges are checked by steadygen.request.validate_request, the same
rules for every entry point, because the bounds come from the settings.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool


class LoraItem(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(description="A name from GET /v1/loras.")
    weight: float = 1.0


class JobCreate(BaseModel):
    """POST /v1/jobs"""

    model_config = ConfigDict(extra="forbid")

    prompt: str = Field(description="What to draw.")
    negative_prompt: str | None = Field(None, description="Used only when guidance > 0.")
    width: int | None = Field(None, description="Multiple of 16; default: the model's size.")
    height: int | None = Field(None, description="Multiple of 16; default: the model's size.")
    size: str | None = Field(None, description="WIDTHxHEIGHT, instead of width and height.")
    steps: int | None = Field(None, description="Denoising steps (default 8).")
    guidance: float | None = Field(None, description="CFG scale; > 0 doubles compute.")
    seed: int | None = Field(None, description="0 to 4294967295; random when left out.")
    n: int | None = Field(None, description="Images, 1 to 4.")
    model: str | None = None
    priority: int = Field(0, ge=-100, le=100, description="Higher runs first.")
    preview: StrictBool = Field(False, description="Send a live preview (base64 JPEG) "
                                                   "with step events.")
    # editing: images are an input id (POST /v1/inputs) or base64 (a data URL too)
    mode: Literal["txt2img", "img2img", "inpaint"] | None = Field(
        None, description="Default: inpaint with a mask, img2img with an image, else txt2img.")
    init_image: str | None = Field(None, description="The image to start from.")
    mask: str | None = Field(None, description="Same size as init_image; white = redo.")
    control_image: str | None = Field(None, description="Needs a configured ControlNet.")
    strength: float | None = Field(None, description="0 < strength <= 1 (img2img 0.75).")
    loras: list[LoraItem] | None = Field(None, description="Adapters from GET /v1/loras.")
    control_scale: float | None = Field(None, description="0 to 2 (default 0.75).")
    mask_blur: int | None = Field(None, description="Pixels of seam blending, 0 to 64.")
    mask_invert: bool | None = None
    inpaint_fill: Literal["original", "fill"] | None = None
    inpaint_full_res: bool | None = Field(None, description="Redo only the mask's box.")
    inpaint_full_res_padding: int | None = None
    resize_mode: Literal["resize", "crop", "fill"] | None = None


class OpenAIImageRequest(BaseModel):
    """POST /v1/images/generations (OpenAI's fields, plus steadygen's extensions)."""

    model_config = ConfigDict(extra="forbid")

    prompt: str
    model: str | None = None
    n: int | None = 1
    size: str | None = Field(None, description="WIDTHxHEIGHT or 'auto'.")
    response_format: Literal["b64_json", "url"] | None = "b64_json"
    # OpenAI fields accepted for compatibility; they do not change the image.
    quality: str | None = None
    style: str | None = None
    user: str | None = None
    background: str | None = None
    moderation: str | None = None
    output_format: Literal["png", "jpeg", "webp"] | None = "png"
    output_compression: int | None = Field(
        None, ge=0, le=100, description="jpeg and webp quality, 0 to 100 (default 100).")
    stream: bool | None = False
    partial_images: int | None = Field(
        0, ge=0, le=3, description="With stream: previews sent before the image, 0 to 3.")
    # steadygen extensions
    steps: int | None = None
    seed: int | None = None
    guidance: float | None = None
    negative_prompt: str | None = None


class A1111Txt2Img(BaseModel):
    """POST /sdapi/v1/txt2img. A1111 clients send many more fields (samplers, hires fix,
    scripts); those are accepted and ignored, as they have no meaning for Z-Image."""

    model_config = ConfigDict(extra="ignore")

    prompt: str = ""
    negative_prompt: str | None = ""
    width: int = 1024
    height: int = 1024
    steps: int = 8
    cfg_scale: float = 0.0
    seed: int = -1
    batch_size: int = 1
    n_iter: int = 1
    sampler_name: str | None = None
    sampler_index: str | None = None  # the older name of sampler_name
    scheduler: str | None = None
    override_settings: dict[str, Any] | None = None
    override_settings_restore_afterwards: bool = True
    send_images: bool = True  # false: the answer's images list is empty
    save_images: bool = False  # steadygen keeps every job's images; accepted for A1111
    alwayson_scripts: dict[str, Any] | None = None  # extensions' arguments; ignored


class A1111PngInfo(BaseModel):
    """POST /sdapi/v1/png-info"""

    image: str = Field(description="The image, base64 (a data: URL prefix is allowed).")


class A1111Img2Img(A1111Txt2Img):
    """POST /sdapi/v1/img2img: txt2img's fields plus the input images and inpaint options."""

    init_images: list[str] = []
    mask: str | None = None
    denoising_strength: float = 0.75
    mask_blur: int = 4
    inpainting_fill: int = 0
    inpaint_full_res: bool | int = False
    inpaint_full_res_padding: int = 32
    inpainting_mask_invert: int = 0
    resize_mode: int = 0
    include_init_images: bool = False


class ErrorBody(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None
    errors: list[dict[str, str]] = []


class ErrorResponse(BaseModel):
    error: ErrorBody


ERROR_TEXT = {
    400: "Invalid input; `error.param` and `error.errors[].field` name the fields.",
    401: "The API key is missing or wrong (only when the server has one).",
    404: "No such job, image or route.",
    409: "The job was cancelled before it finished.",
    413: "The request body is larger than the server's limit.",
    429: "The queue is full; `Retry-After` says when to try again.",
    500: "The job failed (the message says why), or a bug.",
    503: "The job queue cannot be reached, or the job database is locked by another "
         "process; `Retry-After` says when to try again.",
    507: "The data directory or the job database cannot be written (a full disk?).",
}


def error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` for the errors a route can answer, all in ErrorResponse's shape."""
    return {code: {"model": ErrorResponse, "description": ERROR_TEXT[code]} for code in codes}


def stream_response(media_type: str, description: str) -> dict[int | str, dict[str, Any]]:
    """The 200 of a route that answers with something other than JSON."""
    return {200: {"description": description, "content": {media_type: {}}}}

