"""Results back to the PACS: DICOM objects built from a result (objects.py, uids.py), queued and sent."""
