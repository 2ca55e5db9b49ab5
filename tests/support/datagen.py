"""Generated DICOM data for tests and benchmarks: see :mod:`dde.synthetic`."""

from dde.synthetic import make_instance, write_series, write_studies

__all__ = ["make_instance", "write_series", "write_studies"]
