"""The generation side of the daemon: the worker thread that owns MLX (see ``worker``)."""

from livegen.engine.worker import QueueFull, UnknownModel, Worker, WorkerEvent, WorkerOptions

__all__ = ["QueueFull", "UnknownModel", "Worker", "WorkerEvent", "WorkerOptions"]
