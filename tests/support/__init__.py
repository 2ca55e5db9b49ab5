"""Helpers shared by the tests: real Orthanc processes, free ports, DCMTK senders."""
