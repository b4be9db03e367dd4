"""DICOM networking: receive studies over C-STORE, send results back to PACS."""
