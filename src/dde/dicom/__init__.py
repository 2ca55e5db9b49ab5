"""DICOM vocabulary shared by the receiver and the senders."""
