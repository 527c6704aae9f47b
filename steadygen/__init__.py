"""steadygen: a Z-Image-Turbo image server whose generation time is fast, steady and explained."""

__version__ = "0.1.0"
