"""The MLflow pyfunc detector, logged as "models from code": MLflow runs this file to load it.

Nothing is pickled: the model is rebuilt from the logged `config` (config.yaml) and `weights`
(weights.safetensors) artifacts by `training.models.load_model_files`. torch and the model code
are imported when the model loads, not when MLflow reads this file to log it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import mlflow
import numpy as np

from data.errors import AnonlabError

# Masks are probabilities per pixel; a pixel belongs to the object from this value on.
MASK_THRESHOLD = 0.5


class Detector(mlflow.pyfunc.PythonModel):
    """Detections per image: boxes, scores, class names, and masks or keypoints."""

    def load_context(self, context: mlflow.pyfunc.PythonModelContext) -> None:
        import torch

        from training.models import load_model_files

        self.model, config = load_model_files(
            Path(context.artifacts["config"]), Path(context.artifacts["weights"])
        )
        self.classes = [str(c) for c in config["classes"]]
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.model.to(self.device)

    def predict(
        self,
        context: mlflow.pyfunc.PythonModelContext,
        # Also a list of arrays. The hint says ndarray only because MLflow derives input
        # validation from it and, for anything but a bare ndarray (its "no schema" type), warns
        # at every load that it cannot; inputs are checked here instead.
        model_input: np.ndarray,
        params: dict[str, Any] | None = None,
    ) -> list[dict[str, np.ndarray]]:
        """One HxWx3 uint8 RGB image, or a list of them; one dict of arrays per image.

        `boxes` (N, 4) xyxy float32 in pixels, `scores` (N,) float32, `labels` (N,) class
        names; `masks` (N, H, W) bool for a Mask R-CNN, `keypoints` (N, K, 3) x, y,
        visibility and `keypoint_scores` (N, K) for a Keypoint R-CNN.
        """
        import torch

        images = [model_input] if _is_image(model_input) else list(model_input)
        tensors = [_to_tensor(image, i, self.device) for i, image in enumerate(images)]
        with torch.inference_mode():
            outputs = self.model(tensors) if tensors else []
        return [self._detections(output) for output in outputs]

    def _detections(self, output: dict[str, Any]) -> dict[str, np.ndarray]:
        labels = output["labels"].cpu().numpy()
        result = {
            "boxes": output["boxes"].float().cpu().numpy(),
            "scores": output["scores"].float().cpu().numpy(),
            # Label i (1-based, 0 is background) is classes[i - 1].
            "labels": np.array([self.classes[i - 1] for i in labels], dtype=np.str_),
        }
        if "masks" in output:
            result["masks"] = (output["masks"][:, 0] >= MASK_THRESHOLD).cpu().numpy()
        if "keypoints" in output:
            result["keypoints"] = output["keypoints"].float().cpu().numpy()
            result["keypoint_scores"] = output["keypoints_scores"].float().cpu().numpy()
        return result


def _is_image(value: Any) -> bool:
    return isinstance(value, np.ndarray) and value.ndim == 3


def _to_tensor(image: Any, index: int, device: Any) -> Any:
    """CHW float in [0, 1] on `device`, as torchvision's detection models take images."""
    import torch

    if not (
        isinstance(image, np.ndarray)
        and image.ndim == 3
        and image.shape[2] == 3
        and image.dtype == np.uint8
    ):
        got = (
            f"{image.dtype} array of shape {image.shape}"
            if isinstance(image, np.ndarray)
            else type(image).__name__
        )
        raise AnonlabError(
            f"image {index}: expected an HxWx3 uint8 RGB array, got a {got}; decode images to "
            "RGB uint8 as a viewer shows them (EXIF orientation applied), for example with "
            "serving.runtime.imagefile.read_upright(path)"
        )
    chw = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)
    return chw.to(device=device, dtype=torch.float32).div_(255)


mlflow.models.set_model(Detector())
