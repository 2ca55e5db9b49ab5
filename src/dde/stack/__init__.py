"""The reference deployment: local Orthanc processes and the router, started and stopped."""
