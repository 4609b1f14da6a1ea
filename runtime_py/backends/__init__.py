"""Backends that run exported artifacts: one small interface, one file per backend."""

from .base import Backend, BackendUnavailableError, ComponentFn, available_backends, get_backend, register_backend

__all__ = ["Backend", "BackendUnavailableError", "ComponentFn", "available_backends", "get_backend", "register_backend"]
