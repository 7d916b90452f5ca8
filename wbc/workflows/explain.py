"""``wbc explain``: why a model names a class for an image (Grad-CAM for the CNN families, the
decisive measurements for the features family), drawn over the image."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import numpy as np

from wbc.core.errors import BadImage
from wbc.core.imageio import read_rgb
from wbc.workflows.predict import Box, model_inputs


def overlay_heat(
    rgb: np.ndarray, cam: np.ndarray, region: Optional[Box] = None, alpha: float = 0.45
) -> np.ndarray:
    """``rgb`` with ``cam`` (values in [0, 1]) drawn as a jet colour map over ``region``."""
    import cv2
    from matplotlib import colormaps

    height, width = rgb.shape[:2]
    x0, y0, x1, y1 = region if region is not None else (0, 0, width, height)
    side_w, side_h = max(1, x1 - x0), max(1, y1 - y0)
    heat = cv2.resize(cam.astype(np.float32), (side_w, side_h), interpolation=cv2.INTER_LINEAR)
    heat = np.clip(heat, 0.0, 1.0)
    colours = (colormaps["jet"](heat)[..., :3] * 255.0).astype(np.float32)
    out = rgb.astype(np.float32).copy()
    # The part of the region that lies inside the image (a padded crop may reach past an edge).
    ix0, iy0, ix1, iy1 = max(x0, 0), max(y0, 0), min(x1, width), min(y1, height)
    if ix1 > ix0 and iy1 > iy0:
        sub = (slice(iy0 - y0, iy1 - y0), slice(ix0 - x0, ix1 - x0))
        weight = (alpha * (0.35 + 0.65 * heat[sub]))[..., None]
        target = out[iy0:iy1, ix0:ix1]
        out[iy0:iy1, ix0:ix1] = target * (1 - weight) + colours[sub] * weight
    result = np.clip(out.round(), 0, 255).astype(np.uint8)
    if region is not None:
        cv2.rectangle(
            result,
            (ix0, iy0),
            (max(ix0, ix1 - 1), max(iy0, iy1 - 1)),
            (255, 255, 255),
            max(1, round(min(height, width) / 240)),
        )
    return result


def explain_image(
    run, image: Path | str, output: Path | str, *, input_kind: str = "auto"
) -> dict[str, Any]:
    """Why the model names the class it names for ``image``, saved as a PNG of the image's size.

    The family explains (``Classifier.explain``): a Keras model with Grad-CAM (where it looked),
    a features model with the measurements that moved its decision most, drawn as the regions
    it measured. With a run trained on crops, the map covers the main WBC's crop square
    (outlined). Returns file, class, probability, probabilities, box (or None), output, method,
    and for a features model ``features``.
    """
    from PIL import Image

    image, output = Path(image), Path(output)
    rgb = read_rgb(image)
    inputs = model_inputs(rgb, run.spec, run.crop_size, input_kind=input_kind)
    if not inputs:
        raise BadImage(image, "no white blood cell found")
    why = run.model.explain(inputs[0].pixels, run.classes)
    probs = np.asarray(why["probabilities"], dtype=np.float64)
    picture = overlay_heat(rgb, np.asarray(why["heat"], np.float32), inputs[0].box)
    from wbc.core.manifest import atomic_path

    with atomic_path(output) as tmp:
        Image.fromarray(picture).save(tmp, format="PNG")
    index = int(np.argmax(probs))
    result = {
        "file": str(image),
        "class": run.classes[index],
        "probability": round(float(probs[index]), 6),
        "probabilities": {c: round(float(p), 6) for c, p in zip(run.classes, probs)},
        "box": list(inputs[0].box) if inputs[0].box is not None else None,
        "output": str(output),
        "method": why.get("method", ""),
    }
    if "features" in why:
        result["features"] = why["features"]
    return result
