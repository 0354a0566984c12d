"""Facial recognition: face detection and cropping, embedding training (ArcFace), verification,
enrolment and open-set identification, and the LFW pair protocol."""
