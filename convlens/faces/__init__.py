"""Facial recognition: face detection and cropping, embedding training (ArcFace), verification,
enrolment and open-set identification, and the LFW pair protocol.

    detect.py      Haar-cascade face boxes (tilted too), crops with a margin, CNN confirmation
    align.py       two-point (eyes) alignment onto ArcFace's 112x112 template
    poses.py       seeded pose changes of lfw-faces' faces: the alignment protocol
    head.py        EmbeddingNet (unit embeddings + identity centres), ArcFace logits and loss
    embed.py       EmbedTask: `convlens train --task embed`, validation pairs and threshold
    recogniser.py  FaceRecogniser: photo -> face crop -> embedding, for a trained run
    verify.py      verify two photos;  gallery.py: enroll a gallery .npz, identify against it
    metrics.py     ROC, AUC, EER, TAR@FAR, best threshold, rank-k, open-set DIR@FAR, pairs
    lfw.py         LFW pairs.txt reader and 10-fold accuracy;  report.py: ROC figure, report
    cli.py         the verify, enroll, identify and lfw commands
"""
