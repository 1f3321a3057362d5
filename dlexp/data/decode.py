"""Image bytes to a uint8 RGB tensor, whatever the file's colour mode."""

from __future__ import annotations

import io

import torch
from PIL import Image, UnidentifiedImageError
from torchvision.io import ImageReadMode, decode_image
from torchvision.transforms import v2

from dlexp.errors import DlexpError


def decode_rgb(data: bytes, where: str) -> torch.Tensor:
    """Decode image bytes to a uint8 RGB ``3 x H x W`` tensor.

    Grayscale, palette, RGBA, CMYK and 16-bit images are converted, not rejected; formats torchvision
    cannot decode go through PIL. Undecodable bytes raise a DlexpError naming ``where``.
    """
    if not data:
        raise DlexpError(f"{where}: not a readable image (the file is empty)")
    try:
        image = decode_image(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=ImageReadMode.RGB)
    except RuntimeError:
        try:
            with Image.open(io.BytesIO(data)) as pil:
                image = v2.functional.pil_to_tensor(pil.convert("RGB"))
        except (UnidentifiedImageError, OSError, ValueError) as error:
            raise DlexpError(f"{where}: not a readable image ({error})") from None
    if image.dtype != torch.uint8:  # 16-bit PNGs decode to uint16
        image = v2.functional.to_dtype(image, torch.uint8, scale=True)
    return image


# ----------------------------------------------------------------------------------------- the Dataset
