"""Request options and response format, shared by the HTTP server and the DLC handler
(standard library + contract only, so the DLC needs no web framework)."""

from __future__ import annotations

from whisper_contract import CONTENT_TYPES, RequestOptions

CUSTOM_ATTRIBUTES = "x-amzn-sagemaker-custom-attributes"
_MIME_TO_FORMAT = {ctype.split(";")[0]: fmt for fmt, ctype in CONTENT_TYPES.items()}


def parse_options(query: str, custom_attributes: str | None) -> RequestOptions:
    """Options from the query string and the custom-attributes header (same wire format);
    a key given in both places is an error, not a silent choice."""
    parts = [p for p in (query, (custom_attributes or "").strip()) if p]
    return RequestOptions.from_query("&".join(parts))


def choose_format(accept: str | None, options: RequestOptions) -> str:
    """The Accept header if it names one of our formats, else the single requested format,
    else JSON."""
    for part in (accept or "").split(","):
        mime = part.split(";")[0].strip().lower()
        if mime in _MIME_TO_FORMAT:
            return _MIME_TO_FORMAT[mime]
    return options.formats[0] if len(options.formats) == 1 else "json"
