"""DICOM (and NIfTI/NRRD) input and output on numpy arrays plus small metadata dataclasses."""
