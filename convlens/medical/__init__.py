"""Medical image analysis: detection metrics with confidence intervals, multi-label disease
classification, anomaly detection from normal images only, DICOM and MedMNIST formats."""
