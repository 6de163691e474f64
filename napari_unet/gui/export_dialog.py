"""The dialog that asks what a bioimage.io export needs: file, authors, licence, consent."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDialog,
    QDialogButtonBox,
    QFileDialog,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from napari_unet.gui.controls import form

LICENCES = ("CC-BY-4.0", "CC-BY-NC-4.0", "CC0-1.0", "MIT", "BSD-3-Clause")


@dataclass(frozen=True)
class ExportChoice:
    """What the user chose in the export dialog.

    Attributes
    ----------
    output : Path
        The ``.zip`` to write.
    authors : list of str
    license_id : str
        SPDX identifier.
    share_image : bool
        A patch of the user's own image may be shipped as test data.
    """

    output: Path
    authors: list[str]
    license_id: str
    share_image: bool


class ExportDialog(QDialog):
    """Asks where to write a model's package, who made it, its licence, and whether a patch
    of the user's image may be shipped as test data (only offered when there is one).

    Parameters
    ----------
    name : str
        The model to export.
    image_name : str or None
        The user's image that could provide the test patch; None hides the question.
    parent : QWidget, optional
    """

    def __init__(self, name: str, image_name: str | None, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setWindowTitle(f"Export {name} to bioimage.io")
        self.output_edit = QLineEdit(str(Path.home() / f"{name}.zip"))
        browse = QPushButton("Browse...")
        browse.clicked.connect(self._browse)
        where = QHBoxLayout()
        where.addWidget(self.output_edit)
        where.addWidget(browse)
        where_widget = QWidget()
        where_widget.setLayout(where)
        self.authors_edit = QLineEdit()
        self.authors_edit.setPlaceholderText("First Last, Other Person")
        self.licence_combo = QComboBox()
        self.licence_combo.setEditable(True)
        self.licence_combo.addItems(LICENCES)
        self.share_check = QCheckBox(
            f"Use a 256 x 256 patch of '{image_name}' as test data (it is shipped in the package)"
        )
        self.offers_image = image_name is not None
        self.share_check.setVisible(self.offers_image)
        note = QLabel(
            "Without your image the test data comes from the model's own training patches "
            "or napari-unet's sample images. Models from em-membranes need a non-commercial "
            "licence (CC-BY-NC-4.0): its data is for non-commercial research only."
        )
        note.setWordWrap(True)
        self.buttons = QDialogButtonBox(QDialogButtonBox.Ok | QDialogButtonBox.Cancel)
        self.buttons.accepted.connect(self.accept)
        self.buttons.rejected.connect(self.reject)
        layout = QVBoxLayout(self)
        layout.addLayout(
            form(
                [
                    ("Package", where_widget),
                    ("Authors", self.authors_edit),
                    ("Licence", self.licence_combo),
                ]
            )
        )
        layout.addWidget(self.share_check)
        layout.addWidget(note)
        layout.addWidget(self.buttons)
        self.authors_edit.textChanged.connect(self._update)
        self.output_edit.textChanged.connect(self._update)
        self._update()

    def _browse(self) -> None:
        path, _ = QFileDialog.getSaveFileName(
            self,
            "Export to",
            self.output_edit.text(),
            "bioimage.io package (*.zip)",
            options=QFileDialog.DontConfirmOverwrite,  # an existing file is refused, not replaced
        )
        if path:
            self.output_edit.setText(path if path.endswith(".zip") else f"{path}.zip")

    def _update(self) -> None:
        ready = bool(self.choice().authors) and bool(self.output_edit.text().strip())
        self.buttons.button(QDialogButtonBox.Ok).setEnabled(ready)

    def choice(self) -> ExportChoice:
        """The current answers."""
        return ExportChoice(
            output=Path(self.output_edit.text().strip()).expanduser(),
            authors=[a.strip() for a in self.authors_edit.text().split(",") if a.strip()],
            license_id=self.licence_combo.currentText().strip(),
            share_image=self.offers_image and self.share_check.isChecked(),
        )


def ask_export(parent: QWidget, name: str, image_name: str | None) -> ExportChoice | None:
    """Show the export dialog; the choice, or None when cancelled."""
    dialog = ExportDialog(name, image_name, parent)
    return dialog.choice() if dialog.exec_() == QDialog.Accepted else None
