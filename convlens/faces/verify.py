"""Face verification: are two photos the same person? (cosine similarity >= the run's threshold)"""

from __future__ import annotations

import torch

from convlens.faces.recogniser import FaceRecogniser


def verify(rec: FaceRecogniser, image1: str, image2: str) -> dict:
    """{"verified", "similarity", "threshold", "model", "faces": {image: {"box", ...}}}."""
    (x1, face1), (x2, face2) = rec.face(image1), rec.face(image2)
    emb = rec.embed(torch.stack([x1, x2]))  # (2, D) unit vectors
    similarity = float(emb[0] @ emb[1])
    return {
        "verified": similarity >= rec.threshold,
        "similarity": similarity,
        "threshold": rec.threshold,
        "model": rec.model_id,
        "detection": rec.detect,
        "faces": {image1: face1, image2: face2} if image1 != image2 else {image1: face1},
    }
