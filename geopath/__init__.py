"""geopath: move trained networks along geodesics of weight space."""

__version__ = "0.1.0"
