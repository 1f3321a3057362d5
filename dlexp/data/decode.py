"""Image bytes to a uint8 RGB tensor as an image viewer shows them, whatever the file's colour mode."""

from __future__ import annotations

import io

import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from torchvision.io import ImageReadMode, decode_image
from torchvision.transforms import v2

from dlexp.errors import DlexpError

#: What decoding does to a file's pixels; part of the decoded-image cache's key, so a change here decodes
#: again. 2: the EXIF orientation is applied (phones store photos sideways with Orientation=6 and the like).
DECODING = "rgb uint8, exif orientation applied (2)"

#: File signatures of the formats torchvision's decode_image applies the EXIF orientation to; its docs:
#: "apply_exif_orientation ... Only applies to JPEG and PNG images". WebP (which can carry EXIF too) and
#: the rest go through Pillow, which applies it to any format (ImageOps.exif_transpose).
_ORIENTED_BY_TORCHVISION = (b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n")


def decode_rgb(data: bytes, where: str) -> torch.Tensor:
    """Decode image bytes to a uint8 RGB ``3 x H x W`` tensor, as an image viewer shows the image.

    The EXIF ``Orientation`` tag is applied (a photo stored sideways comes out upright, its height and width
    swapped where it says so), by torchvision for JPEG and PNG and by Pillow for the other formats.
    Grayscale, palette, RGBA, CMYK and 16-bit images are converted, not rejected; bytes torchvision cannot
    decode go through Pillow. Undecodable bytes raise a DlexpError naming ``where``.
    """
    if not data:
        raise DlexpError(f"{where}: not a readable image (the file is empty)")
    image = None
    if data.startswith(_ORIENTED_BY_TORCHVISION):
        try:
            image = decode_image(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=ImageReadMode.RGB,
                                 apply_exif_orientation=True)
        except RuntimeError:
            pass  # e.g. a CMYK or truncated JPEG libjpeg refuses: Pillow decodes it or names the problem
    if image is None:
        try:
            with Image.open(io.BytesIO(data)) as pil:
                image = v2.functional.pil_to_tensor(ImageOps.exif_transpose(pil).convert("RGB"))
        except (UnidentifiedImageError, OSError, ValueError) as error:
            raise DlexpError(f"{where}: not a readable image ({error})") from None
    if image.dtype != torch.uint8:  # 16-bit PNGs decode to uint16
        image = v2.functional.to_dtype(image, torch.uint8, scale=True)
    return image
