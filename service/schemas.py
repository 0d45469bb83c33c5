"""Request and response bodies of API v1 (pydantic v2); they are the OpenAPI schema too."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from .config import Settings

#: The limits' defaults, for the bounds and descriptions of the schema; the server checks its own settings.
_DEFAULTS = Settings.model_construct()

FilterValue = str | int | bool | list[str] | list[int] | list[bool]


class SearchParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # upper bounds are the server's settings (max_limit, max_candidates, max_offset), checked by the engine
    limit: int = Field(10, ge=1, description="results to return (at most the server's max_limit)")
    candidates: int = Field(100, ge=1, description="global top-k handed to the matcher (at most max_candidates)")
    rerank: bool = Field(True, description="rerank the candidates with the fine-grained matcher")
    min_score: float | None = Field(None, ge=-10, le=10, description="drop results whose `score` is below this "
                                                                      "(a probability 0–1 with a calibrated model)")
    offset: int = Field(0, ge=0, description="skip this many results (paging; at most max_offset)")
    filter: dict[str, FilterValue] | None = Field(
        None, description="metadata field → value or list of values; `kind`, `item_id`, `image_id` address the item")
    explain: bool = Field(False, description="give each reranked result of the page its word → patch explanation "
                                             "(costs one matcher call over the page)")


class TextSearch(SearchParams):
    text: str = Field(..., min_length=1, description="the query (at most max_text_chars)")


class ImageIdSearch(SearchParams):
    image_id: str = Field(..., description="an indexed image used as the query")


class WordExplanation(BaseModel):
    text: str = Field(description="the word token, as the tokenizer sees it (lower case; long words split)")
    span: list[int] | None = Field(description="[start, end) characters of the token in the caption (for a text "
                                               "query: the query with whitespace collapsed); null if not found")
    score: float = Field(description="the word's score s_w: its similarity to the patches, weighted by its attention")
    weight: float = Field(description="its weight in the word side of the fine score (LDA)")
    contribution: float = Field(description="weight · score / 2: its share of fine_raw")
    patches: list[list[float]] = Field(description="its attention over the image's patch grid (rows × columns, "
                                                   "summing to 1, or less where a matcher with a relevance "
                                                   "threshold found patches irrelevant to the word): where in the "
                                                   "image the word was matched")
    picked_by: list[list[float]] | None = Field(
        None, description="eq. 7's attention read for this word: how much of each patch's attention over the "
                          "caption's words went to it, as a distribution over the grid (summing to 1): where the "
                          "word's object is, with the words competing for each patch; null for a CAMP matcher")


class Explanation(BaseModel):
    grid: list[int] = Field(description="[rows, columns] of the image's patch grid")
    fine_raw: float = Field(description="the matcher's raw fine score (fine_score before calibration)")
    patch_side: float = Field(description="the patch side's half of the word–patch score (eqs. 7–8); fine_raw = "
                                          "patch_side + the words' contributions + region")
    region: float = Field(0.0, description="ρ · S_region, the region level's share of fine_raw (matchers with "
                                           "views: the caption against its best-fitting view); 0 without views")
    words: list[WordExplanation]


class SearchResult(BaseModel):
    id: str
    rank: int
    score: float = Field(description="final score: with a calibrated model, the probability (0–1) that the result "
                                     "matches the query, from the fused score when reranked, else from the global "
                                     "cosine alone; results are sorted by it")
    global_score: float = Field(description="the same probability judged from the global CLIP cosine alone")
    fine_score: float | None = Field(description="the same probability judged from the matcher's word–patch score "
                                                 "alone; null when not reranked")
    cosine: float = Field(description="the raw global cosine similarity from Qdrant")
    metadata: dict[str, Any] = {}
    uri: str | None = Field(None, description="images: the http(s) URL the image was indexed from, else its "
                                              "content_url (a path on the server's disk is never shown); "
                                              "null for captions")
    content_url: str | None = Field(None, description="images: where GET returns the original; null for captions")
    width: int | None = Field(None, description="images: pixels; null for captions")
    height: int | None = Field(None, description="images: pixels; null for captions")
    text: str | None = Field(None, description="captions: the text; null for images")
    image_id: str | None = Field(None, description="captions: the image it was indexed with, if any; null for "
                                                   "images")
    explanation: Explanation | None = Field(None, description="with `explain`: why this result matched (null when "
                                                              "not reranked, or for a top-K selector matcher)")


class Timing(BaseModel):
    """Milliseconds per stage; `encode` includes a reranking query's own preparation for the matcher."""

    encode: float
    recall: float
    gather: float
    rerank: float
    explain: float | None = None
    total: float


class SearchResponse(BaseModel):
    results: list[SearchResult]
    timing_ms: Timing
    model: str
    scores: Literal["probability", "raw"] = Field(
        description="probability: score, global_score and fine_score are probabilities calibrated on the model's "
                    "validation split; raw: the model has no calibration and they are the raw scores")
    notice: str | None = Field(None, description="set when reranking is unavailable (a stock backbone without a "
                                                 "trained matcher): why, and how to get it")


class ItemError(BaseModel):
    code: str
    message: str


class UploadResult(BaseModel):
    filename: str | None = None
    id: str | None
    error: ItemError | None
    duplicate_of: int | None = Field(None, description="this entry repeats entry N of the same request (same id): "
                                                       "stored once, under the id shown")


class UploadResponse(BaseModel):
    items: list[UploadResult]
    indexed: int = Field(description="entries stored by this request")
    failed: int = Field(description="entries refused (see their `error`)")
    duplicates: int = Field(0, description="entries that repeat an earlier entry of the request (`duplicate_of`)")


class TextIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # lengths are checked by the indexer against the settings (max_id_chars, max_text_chars), naming them
    id: str | None = Field(None, description="see the id rule in docs/api.md; default: a hash of the text")
    text: str = Field(..., description="the caption (at most max_text_chars)")
    metadata: dict[str, Any] = {}
    image_id: str | None = Field(None, description="the image this caption describes, if any")


class TextsIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    items: list[TextIn] = Field(..., min_length=1, description=f"at most max_texts_per_request "
                                                                f"({_DEFAULTS.max_texts_per_request} by default)")


class ImageOut(BaseModel):
    id: str
    uri: str | None = Field(description="the http(s) URL the image was indexed from, else its content_url")
    content_url: str
    metadata: dict[str, Any]
    width: int | None = None
    height: int | None = None
    content_type: str | None = None
    filename: str | None = None
    bytes: int | None = None
    sha256: str | None = None
    format: str | None = None


class TextOut(BaseModel):
    id: str
    text: str | None
    image_id: str | None
    metadata: dict[str, Any]


class JobOut(BaseModel):
    id: str
    state: Literal["queued", "running", "succeeded", "failed"]
    created: float
    started: float | None = None
    finished: float | None = None
    total: int = 0
    done: int = 0
    failed: int = 0
    indexed_images: int = 0
    indexed_texts: int = 0
    items_per_s: float = 0.0
    message: str | None = None
    errors: list[dict[str, str]] = []


class JobList(BaseModel):
    jobs: list[JobOut]


class ErrorBody(BaseModel):
    code: str
    message: str


class ErrorResponse(BaseModel):
    error: ErrorBody
