"""fom: bring a still image to life with the First Order Motion Model."""

__version__ = "0.1.0"
