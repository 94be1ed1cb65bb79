"""The file formats a student is delivered in, the one table: the CLI's ``--export``, the
files it writes, the API's ``format=`` and the download names all read it. Torch-free."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ModelFormat:
    name: str
    suffix: str  # appended to the student's name: resnet8 + ".onnx"
    description: str


MODEL_FORMATS: dict[str, ModelFormat] = {
    f.name: f for f in (
        ModelFormat("safetensors", ".safetensors", "weights with the model card in the metadata (dfmscd, PyTorch)"),
        ModelFormat("onnx", ".onnx", "ONNX graph; mean/std and the card in its metadata_props"),
        ModelFormat("torchscript", ".torchscript.pt", "TorchScript archive (torch.jit.load)"),
        ModelFormat("onnx-int8", ".int8.onnx",
                    "INT8 ONNX (QDQ, static quantization calibrated on the run's synthetic images); card in metadata_props"),
    )
}
NATIVE_FORMAT = "safetensors"
EXPORT_FORMATS: tuple[str, ...] = tuple(n for n in MODEL_FORMATS if n != NATIVE_FORMAT)
# Made only at the end of a run: they need the run's calibration images (DistillResult.calibration).
CALIBRATED_FORMATS: tuple[str, ...] = ("onnx-int8",)


def file_name(student: str, fmt: str) -> str:
    return student + MODEL_FORMATS[fmt].suffix
