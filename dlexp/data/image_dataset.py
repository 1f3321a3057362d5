"""``CsvImageDataset``: the images a CSV lists, as a plain PyTorch ``Dataset`` (usable without Hydra)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch.utils.data import Dataset

from dlexp.data.decode import decode_rgb
from dlexp.data.image_source import ImageSource
from dlexp.data.image_table import label_sort_key, read_image_table
from dlexp.errors import DlexpError


class CsvImageDataset(Dataset):
    """Images listed in a CSV (a label and a file name per row) from a folder or a zip.

    ``dataset[i]`` is ``(image, class index)``: ``image`` is the decoded uint8 RGB ``3 x H x W`` tensor
    passed through ``transform`` when one is given. ``classes`` lists the class names (sorted, or as
    given) and ``class_to_idx`` maps a name to its index. With ``return_label_name=True`` items are
    ``(image, label string)`` instead. Every listed file is checked when the dataset is made, so a
    missing image is reported before any work. Safe with ``DataLoader(num_workers=N)``.
    """

    def __init__(
        self,
        csv_path: str | Path,
        images: str | Path,
        label_column: str = "species",
        filename_column: str = "filename",
        group_column: str | None = None,
        transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
        return_label_name: bool = False,
        classes: Sequence[str] | None = None,
    ) -> None:
        self.csv_path = Path(csv_path)
        self.table = read_image_table(csv_path, label_column, filename_column, group_column)
        self.source = images if isinstance(images, ImageSource) else ImageSource(images)
        self.transform = transform
        self.return_label_name = return_label_name
        self.classes = list(classes) if classes is not None else sorted(set(self.table.label), key=label_sort_key)
        self.class_to_idx = {name: i for i, name in enumerate(self.classes)}
        unknown = self.table.index[~self.table.label.isin(self.class_to_idx)]
        if len(unknown):
            first = self.table.loc[unknown[0]]
            raise DlexpError(f"{self.csv_path}:{first.row}: label {first.label!r} is not one of the classes "
                             f"{self.classes}")
        self.locations = [self._locate(name, row)
                          for name, row in zip(self.table.filename, self.table.row, strict=True)]
        self.targets = [self.class_to_idx[label] for label in self.table.label]

    def _locate(self, filename: str, row: int) -> str:
        location = self.source.locate(filename)
        if location is None:
            raise DlexpError(f"{self.csv_path}:{row}: image {filename!r} not found in {self.source.path}")
        return location

    @property
    def labels(self) -> list[str]:
        return list(self.table.label)

    @property
    def filenames(self) -> list[str]:
        return list(self.table.filename)

    @property
    def groups(self) -> list[str] | None:
        return None if self.table.group.isna().all() else list(self.table.group)

    def __len__(self) -> int:
        return len(self.table)

    def load(self, index: int) -> torch.Tensor:
        """The decoded image of row ``index`` (no transform)."""
        row = self.table.row.iloc[index]
        where = f"{self.csv_path}:{row}: {self.table.filename.iloc[index]} in {self.source.path}"
        return decode_rgb(self.source.read(self.locations[index]), where)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int | str]:
        image = self.load(index)
        if self.transform is not None:
            image = self.transform(image)
        label = self.table.label.iloc[index] if self.return_label_name else self.targets[index]
        return image, label


# ------------------------------------------------------------------------------------ decode once, cached
