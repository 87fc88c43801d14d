"""Co-branding of an order: the employer's logo, two colours and a message.

A logo is accepted only if it really is the image it claims to be: PNG and JPEG are decoded by
Pillow (dimensions checked, the whole file verified), SVG is parsed as XML and refused if it
could run or fetch anything (scripts, event handlers, external references, DTDs). The kind is
decided from the content, never from a file name. Pure: no database.
"""

from __future__ import annotations

import io
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass

from fpdf import FPDF
from PIL import Image, UnidentifiedImageError

from ledger.errors import DomainError

LOGO_BYTES_MAX = 512 * 1024
LOGO_PIXELS_SIDE_MAX = 4_000
MESSAGE_LENGTH_MAX = 300
LOGO_PRINT_W_MM, LOGO_PRINT_H_MM = 28.0, 11.0  # the logo's box on a printed voucher
_COLOUR = re.compile(r"^#?([0-9A-Fa-f]{6})$")
_SVG_NS = "{http://www.w3.org/2000/svg}"
_SVG_FORBIDDEN = {"script", "foreignObject", "iframe", "embed", "object", "audio", "video"}
_XLINK_HREF = "{http://www.w3.org/1999/xlink}href"


class LogoRefused(DomainError):
    code = "logo_refused"
    message = "The logo must be a PNG, JPEG or SVG image of at most 512 KB."
    message_fr = "Le logo doit être une image PNG, JPEG ou SVG de 512 Ko au plus."


class LogoTooLarge(DomainError):
    code = "logo_too_large"
    message = "The logo is larger than 512 KB."
    message_fr = "Le logo dépasse 512 Ko."


class InvalidColour(DomainError):
    code = "invalid_colour"
    message = "A colour is written #RRGGBB (six hexadecimal digits)."
    message_fr = "Une couleur s'écrit #RRVVBB (six chiffres hexadécimaux)."


@dataclass(frozen=True, slots=True)
class Logo:
    data: bytes
    media_type: str


def colour(value: str) -> str:
    match = _COLOUR.match(value.strip())
    if not match:
        raise InvalidColour(colour=value)
    return "#" + match.group(1).upper()


def rgb(value: str) -> tuple[int, int, int]:
    return int(value[1:3], 16), int(value[3:5], 16), int(value[5:7], 16)


def check_logo(data: bytes) -> Logo:
    """The logo with its real media type, or ``logo_too_large`` / ``logo_refused``."""
    if len(data) > LOGO_BYTES_MAX:
        raise LogoTooLarge(size_bytes=len(data), max_bytes=LOGO_BYTES_MAX)
    if data.startswith(b"\x89PNG\r\n\x1a\n") or data.startswith(b"\xff\xd8\xff"):
        logo = Logo(data, _check_bitmap(data))
    else:
        head = data[:1024].lstrip().lower()
        if not (head.startswith(b"<?xml") or head.startswith(b"<svg") or head.startswith(b"<!--")):
            raise LogoRefused("The file is not a PNG, JPEG or SVG image.",
                              message_fr="Le fichier n'est pas une image PNG, JPEG ou SVG.")
        _check_svg(data)
        logo = Logo(data, "image/svg+xml")
    _check_printable(logo)
    return logo


def _check_printable(logo: Logo) -> None:
    """Draw the logo once where the vouchers will: a logo accepted today must print tomorrow
    (an SVG without a size or viewBox, say, cannot be scaled)."""
    pdf = FPDF()
    pdf.add_page()
    try:
        pdf.image(io.BytesIO(logo.data), x=0, y=0, w=LOGO_PRINT_W_MM, h=LOGO_PRINT_H_MM, keep_aspect_ratio=True)
        pdf.output()
    except Exception:  # fpdf2 raises many kinds of errors on drawings it cannot render
        raise LogoRefused("The image cannot be drawn on a voucher (an SVG needs a width and height or a viewBox).",
                          message_fr="L'image ne peut pas être imprimée sur un titre (un SVG doit avoir une taille "
                                     "ou une viewBox).") from None


def _check_bitmap(data: bytes) -> str:
    try:
        with Image.open(io.BytesIO(data)) as image:
            kind = image.format
            width, height = image.size
            image.verify()
        with Image.open(io.BytesIO(data)) as image:
            image.load()  # verify() does not decode the pixels; a truncated file fails here
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError):
        raise LogoRefused("The image is damaged or is not what its header claims.",
                          message_fr="L'image est endommagée ou n'est pas ce qu'annonce son en-tête.") from None
    if kind not in ("PNG", "JPEG"):
        raise LogoRefused()
    if not (0 < width <= LOGO_PIXELS_SIDE_MAX and 0 < height <= LOGO_PIXELS_SIDE_MAX):
        raise LogoRefused(f"The image is {width}×{height} pixels; at most {LOGO_PIXELS_SIDE_MAX} on a side.",
                          message_fr=f"L'image fait {width}×{height} pixels ; {LOGO_PIXELS_SIDE_MAX} au plus par côté.")
    return "image/png" if kind == "PNG" else "image/jpeg"


def _check_svg(data: bytes) -> None:
    refused = LogoRefused("The SVG is not a plain, self-contained drawing (scripts, external references and DTDs are refused).",
                          message_fr="Le SVG n'est pas un dessin autonome (scripts, références externes et DTD refusés).")
    if b"<!DOCTYPE" in data.upper() or b"<!ENTITY" in data.upper():
        raise refused
    try:
        root = ET.fromstring(data)
    except ET.ParseError:
        raise LogoRefused("The SVG is not well-formed XML.", message_fr="Le SVG n'est pas un XML bien formé.") from None
    if root.tag not in (f"{_SVG_NS}svg", "svg"):
        raise refused
    for element in root.iter():
        name = element.tag.rsplit("}", 1)[-1]
        if name in _SVG_FORBIDDEN:
            raise refused
        for attribute, value in element.attrib.items():
            local = attribute.rsplit("}", 1)[-1].lower()
            if local.startswith("on"):
                raise refused
            if (attribute == _XLINK_HREF or local == "href") and not (value.startswith("#") or value.startswith("data:image/")):
                raise refused
            if "url(" in value and not re.fullmatch(r"(?s).*url\(\s*#[^)]*\).*", value):
                raise refused


class InvalidMessage(DomainError):
    code = "invalid_message"
    message = f"The message has at most {MESSAGE_LENGTH_MAX} printable characters."
    message_fr = f"Le message fait au plus {MESSAGE_LENGTH_MAX} caractères imprimables."


def check_message(message: str) -> str:
    message = message.strip()
    if len(message) > MESSAGE_LENGTH_MAX or any(c != "\n" and not c.isprintable() for c in message):
        raise InvalidMessage()
    return message
