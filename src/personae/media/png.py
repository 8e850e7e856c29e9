"""PNG files that carry their generation settings.

The `parameters` text chunk uses AUTOMATIC1111's infotext layout, so A1111's "PNG Info"
tab, ComfyUI and image sites read it:

    <prompt>
    Negative prompt: <negative>
    Steps: 20, Sampler: Euler a, CFG scale: 7, Seed: 1, Size: 512x512, Model: name, ...

personae also stores its full settings as JSON in a `personae` chunk, so `--from-png`
reproduces its own images exactly, including file paths of LoRAs and embeddings.

Which settings appear in the `parameters` line, and under which A1111 name, is declared on
the settings fields themselves (`setting(..., infotext="Steps")`, config/fields.py): both
directions (`infotext_values`, `infotext_settings`) read those declarations.
"""

from __future__ import annotations

import json
import re
import struct
import zlib
from pathlib import Path

from PIL import Image
from PIL.PngImagePlugin import PngInfo
from pydantic import BaseModel, TypeAdapter, ValidationError

from personae.config.fields import extra_of, grouped_fields
from personae.staging import atomic_file

# A1111 infotext's last line: `Key: value, Key: "quoted, value", ...`. One pass over the line: each match
# is a key run (possessive: a run not followed by ":" is skipped whole) with its value, or one other
# character. re.findall with the pair pattern alone retried from every character: minutes on 10 MB.
_TOKEN = re.compile(r'\s*(\w[\w \-/]*+)(?::\s*("(?:\\.|[^\\"])*"|[^,]*)(?:,|$))?|.', re.DOTALL)
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
MAX_TEXT = 1 << 20  # bytes of text chunks read from a PNG: settings are a few KB; more is not settings


def format_number(value: float) -> str:
    """7.0 -> '7', 7.5 -> '7.5' (as A1111 shows CFG scale)."""
    return f"{value:g}"


def lora_tag(name: str, weight: float, unet_weight: float | None = None) -> str:
    """A1111's prompt tag for a LoRA: <lora:name:w>, or <lora:name:te:unet> when the UNet's weight differs from the
    text encoder's (A1111's order, extra_networks_lora.py)."""
    if unet_weight is None or unet_weight == weight:
        return f"<lora:{name}:{weight:g}>"
    return f"<lora:{name}:{weight:g}:{unet_weight:g}>"


def format_parameters(prompt: str, negative: str, params: dict[str, object]) -> str:
    """A1111 infotext. Values with commas or quotes are quoted, as A1111 does."""
    parts = []
    for key, value in params.items():
        if value is None or value == "":
            continue
        text = format_number(value) if isinstance(value, float) else str(value)
        if any(c in text for c in ',:"\n'):
            text = json.dumps(text, ensure_ascii=False)
        parts.append(f"{key}: {text}")
    lines = [prompt]
    if negative:
        lines.append(f"Negative prompt: {negative}")
    lines.append(", ".join(parts))
    return "\n".join(lines)


def infotext_values(settings: BaseModel) -> dict[str, object]:
    """{A1111 key: value} of every field of `settings` that declares its A1111 name, in --help order.

    A field with `infotext_if` is written only when that other field is set (strength only for img2img), or
    those other fields, when it names several (ADetailer's padding: a face fix that inpaints only masked); one with
    `infotext_unless` not at that value.
    """
    values: dict[str, object] = {}
    for _, name, info in grouped_fields(type(settings)):
        extra = extra_of(info)
        if "infotext" in extra and all(getattr(settings, field) for field in _conditions(extra)) \
                and ("infotext_unless" not in extra or getattr(settings, name) != extra["infotext_unless"]):
            values[extra["infotext"]] = getattr(settings, name)
    return values


def _conditions(extra: dict) -> list[str]:
    """The fields whose being set a field's infotext waits for (`infotext_if`: one name or several)."""
    condition = extra.get("infotext_if") or []
    return [condition] if isinstance(condition, str) else list(condition)


class InfotextValueError(ValueError):
    """An infotext value that does not fit its setting's type (e.g. `Steps: four`)."""

    def __init__(self, key: str, text: str, field: str):
        super().__init__(f'"{key}: {text[:40]}" is not a valid {field}')
        self.key, self.text, self.field = key, text, field


def infotext_settings(cls: type[BaseModel], params: dict[str, str]) -> dict[str, object]:
    """{field: value} for the fields of `cls` whose A1111 name is in `params`, each read as its field's type.

    A field written only when others are set (`infotext_if`) is read only when their keys are there too.
    Raises InfotextValueError for a value of the wrong type; bounds are left to the schema's validation.
    """
    data: dict[str, object] = {}
    keys = {name: extra_of(info).get("infotext") for _, name, info in grouped_fields(cls)}
    for _, name, info in grouped_fields(cls):
        key, conditions = keys[name], [keys.get(field) for field in _conditions(extra_of(info))]
        if any(condition and condition not in params for condition in conditions):
            continue  # e.g. the hires "Denoising strength" is the hires fix's only where "Hires upscale" is written
        if key and key in params:
            try:
                data[name] = TypeAdapter(info.annotation).validate_python(params[key].strip())
            except ValidationError:
                raise InfotextValueError(key, params[key], name) from None
    return data


def _pairs(line: str) -> list[tuple[str, str]]:
    """The `Key: value` pairs of an infotext parameter line, in linear time (the pairs re.findall would find)."""
    pairs = []
    for match in _TOKEN.finditer(line):
        key, value = match.group(1), match.group(2)
        if value is None:
            continue
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] == '"':
            try:
                value = str(json.loads(value))
            except ValueError:  # not valid JSON escapes: keep it as written
                pass
        pairs.append((key.strip(), value))
    return pairs


# lines the Dynamic Prompts extension (sd-dynamic-prompts) appends after the parameters line: the prompts as written
TEMPLATE_LINES = ("Template: ", "Negative Template: ")


def parse_parameters(text: str) -> tuple[str, str, dict[str, str]]:
    """Split A1111 infotext into (prompt, negative prompt, {key: value}); Dynamic Prompts' "Template:" and
    "Negative Template:" lines after the parameters line are read as two more keys."""
    lines = text.strip().split("\n")
    params: dict[str, str] = {}
    trailing = 0
    while len(lines) > trailing + 1 and lines[-1 - trailing].startswith(TEMPLATE_LINES):
        trailing += 1
    if trailing and len(_pairs(lines[-1 - trailing])) < 3:
        trailing = 0  # not after a parameters line: the prompt's own text
    templates = [lines.pop() for _ in range(trailing)][::-1]
    pairs = _pairs(lines[-1]) if lines else []
    if len(pairs) >= 3:
        lines.pop()
        params = dict(pairs)
    for line in templates:
        key, _, value = line.partition(": ")
        params[key] = value
    prompt_lines, negative_lines, in_negative = [], [], False
    for line in lines:
        if line.startswith("Negative prompt:"):
            in_negative = True
            line = line[len("Negative prompt:"):].lstrip()
        (negative_lines if in_negative else prompt_lines).append(line)
    return "\n".join(prompt_lines), "\n".join(negative_lines), params


def save_png(image: Image.Image, path: str | Path, parameters: str, extra: dict[str, str] | None = None) -> Path:
    """Write `image` with the `parameters` chunk (and any extra text chunks), atomically."""
    path = Path(path)
    info = PngInfo()
    info.add_text("parameters", parameters)
    for key, value in (extra or {}).items():
        info.add_text(key, value)
    return save_image(image, path, pnginfo=info)


def save_image(image: Image.Image, path: str | Path, **options) -> Path:
    """Write a PNG whole or not at all: a second Ctrl-C (or a full disk) mid-write leaves no torn file behind."""
    with atomic_file(path) as tmp:
        image.save(tmp, format="PNG", **options)
    return path


class PngTextError(ValueError):
    """A file that is not a PNG, or whose text chunks are damaged or too large to be settings."""


def read_png_text(path: str | Path, limit: int = MAX_TEXT) -> dict[str, str]:
    """The tEXt / zTXt / iTXt chunks of a PNG, read from its chunk list without decoding a pixel.

    At most `limit` bytes of text (after inflating) are read: settings are small, and a file with
    more is refused (PngTextError) instead of being parsed for minutes.
    """
    texts: dict[str, str] = {}
    used = 0
    with open(path, "rb") as fh:
        if fh.read(8) != PNG_SIGNATURE:
            raise PngTextError("it is not a PNG file")
        while True:
            head = fh.read(8)
            if len(head) < 8:
                break  # truncated after the last whole chunk: keep what was read
            length, kind = struct.unpack(">I4s", head)
            if kind == b"IEND":
                break
            if kind not in (b"tEXt", b"zTXt", b"iTXt"):
                fh.seek(length + 4, 1)  # pixels and other chunks are skipped, not read
                continue
            if used + length > limit:
                raise PngTextError(f"its text chunks hold more than {limit // 1024} KB, far more than any settings")
            key, text = _text_chunk(kind, fh.read(length), limit - used)
            fh.seek(4, 1)  # CRC
            used += max(length, len(text))
            if key and key not in texts:
                texts[key] = text
    return texts


def read_image_text(path: str | Path, limit: int = MAX_TEXT) -> dict[str, str]:
    """The settings text a picture carries: a PNG's text chunks; a JPEG's or WebP's EXIF UserComment as
    A1111 saves it there (and Civitai serves it), as `parameters`. Raises PngTextError for other files."""
    with open(path, "rb") as fh:
        head = fh.read(12)
    if head.startswith(PNG_SIGNATURE):
        return read_png_text(path, limit)
    if not (head.startswith(b"\xff\xd8") or (head[:4] == b"RIFF" and head[8:12] == b"WEBP")):
        raise PngTextError("it is not a PNG, JPEG or WebP file")
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:  # the header and its EXIF only: no pixel is decoded
            comment = image.getexif().get_ifd(0x8769).get(0x9286)  # Exif IFD, UserComment
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as exc:
        raise PngTextError(f"its EXIF could not be read ({exc})") from None
    if not comment:
        return {}
    if isinstance(comment, str):
        comment = comment.encode("utf-8")
    if len(comment) > limit:
        raise PngTextError(f"its EXIF comment holds more than {limit // 1024} KB, far more than any settings")
    return {"parameters": user_comment(comment)}


def user_comment(data: bytes) -> str:
    """EXIF's UserComment: an 8-byte character code, then the text (piexif's "UNICODE" is UTF-16, big-endian as
    piexif writes it; little-endian from some Windows tools, told apart by where the zero bytes fall)."""
    code, body = data[:8], data[8:]
    if code.startswith(b"UNICODE"):
        if body[:2] in (b"\xff\xfe", b"\xfe\xff"):
            return body.decode("utf-16", errors="replace")
        big = body[0::2].count(0) >= body[1::2].count(0)
        return body.decode("utf-16-be" if big else "utf-16-le", errors="replace").rstrip("\x00")
    if code.startswith(b"ASCII") or code == b"\x00" * 8:
        return body.decode("utf-8", errors="replace").rstrip("\x00")
    return data.decode("utf-8", errors="replace").rstrip("\x00")


def _text_chunk(kind: bytes, data: bytes, room: int) -> tuple[str, str]:
    """(keyword, text) of one text chunk; compressed text is inflated to at most `room` bytes."""
    key, _, rest = data.partition(b"\0")
    keyword = key.decode("latin-1")
    try:
        if kind == b"tEXt":
            return keyword, rest.decode("latin-1")
        if kind == b"zTXt":
            return keyword, _inflate(rest[1:], room).decode("latin-1")
        compressed, rest = rest[:1] == b"\x01", rest[2:]
        _language, _, rest = rest.partition(b"\0")
        _translated, _, rest = rest.partition(b"\0")
        return keyword, (_inflate(rest, room) if compressed else rest).decode("utf-8")
    except (zlib.error, UnicodeDecodeError) as exc:
        raise PngTextError(f"its {kind.decode()} chunk {keyword!r} is damaged ({exc})") from None


def _inflate(data: bytes, room: int) -> bytes:
    inflater = zlib.decompressobj()
    out = inflater.decompress(data, room + 1)
    if len(out) > room:
        raise PngTextError(f"a compressed text chunk inflates to more than {MAX_TEXT // 1024} KB, far more than any "
                           "settings")
    return out
