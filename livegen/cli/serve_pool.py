"""`livegen serve-pool --config F [--address A] [--replicas N] [--num-gpus G]`: start the render pool.

Deploys one Ray Serve application per model of the settings (``<name>-<model>``, see
livegen.engine.ray_pool) on a running cluster (``ray start --head`` on the GPU box, then this with
``--address auto``), or with ``--address local`` on a private cluster that lives as long as this
command. The applications stay on a running cluster after the command returns; ``--wait`` keeps
it in the foreground (Ctrl-C removes them).
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
import time
from pathlib import Path

from livegen.cli import UsageError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve-pool", help="deploy the render pool (one Ray Serve deployment per model)")
    p.add_argument("--config", type=Path, help="settings file: its models (paths as seen on the cluster's "
                                               "machines), levels and fades")
    p.add_argument("--model", action="append", default=None, help="deploy only this model (repeatable)")
    p.add_argument("--address", default="auto", help="the cluster: auto (RAY_ADDRESS or the one this machine "
                                                     "is a node of), the head's HOST:6379, or local (a private "
                                                     "cluster for as long as this command runs); not ray://")
    p.add_argument("--name", default=None, help="the pool's name (default: the settings' engine.deployment)")
    p.add_argument("--replicas", type=int, default=1, help="replicas per model (default 1)")
    p.add_argument("--num-gpus", type=float, default=0.0, help="GPUs per replica (a GPU box with mlx[cuda]: 1)")
    p.add_argument("--num-cpus", type=float, default=1.0, help="CPUs per replica (default 1)")
    p.add_argument("--wait", action="store_true", help="stay in the foreground; Ctrl-C removes the pool")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from livegen.cli.serve import check_weights, load
    from livegen.settings import check_ray_address

    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    settings = load(argparse.Namespace(config=args.config, mapping=None, model=None, log_level=None, no_web=True))
    models = args.model or list(settings.models)
    unknown = [m for m in models if m not in settings.models]
    if unknown:
        raise UsageError(f"no model {', '.join(unknown)} in the settings (have {', '.join(settings.models)})")
    if args.replicas < 1:
        raise UsageError("--replicas must be at least 1")
    if args.address != "local" and (why := check_ray_address(args.address)):
        raise UsageError(f"--address {args.address} {why}")
    check_weights(settings)
    try:
        from livegen.engine.ray_pool import deploy, ray_env
    except ImportError as exc:
        raise UsageError(f"the pool needs the ray extra: pip install 'livegen[ray]' ({exc})") from None
    ray_env()
    try:
        import ray
        from ray import serve
    except ImportError as exc:
        raise UsageError(f"the pool needs the ray extra: pip install 'livegen[ray]' ({exc})") from None
    name = args.name or settings.engine.deployment
    local = args.address == "local"
    if local:
        ray.init(namespace="livegen", include_dashboard=False, log_to_driver=False)
    else:
        try:
            ray.init(address=args.address, namespace="livegen", log_to_driver=False)
        except (ConnectionError, RuntimeError) as exc:
            raise UsageError(f"cannot connect to the Ray cluster at {args.address}: {exc}") from None
    t0 = time.monotonic()
    apps = deploy(settings, name, models, replicas=args.replicas, num_cpus=args.num_cpus, num_gpus=args.num_gpus)
    gcs = ray.get_runtime_context().gcs_address
    print(f"serve-pool: {', '.join(apps)} running ({args.replicas} replica(s) each) in {time.monotonic() - t0:.1f} s; "
          f"daemons use engine: {{kind: ray, address: {gcs if local else args.address}, deployment: {name}}}")
    if not (args.wait or local):
        return 0
    # Ray's driver takes SIGINT over (a plain sleep is never interrupted): our own handlers, then
    # the pool is removed (and a private cluster stopped) from the main thread
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    while not stop.wait(1.0):
        pass
    for app in apps:
        serve.delete(app)
    if local:
        serve.shutdown()
        ray.shutdown()
    print("serve-pool: removed " + ", ".join(apps))
    return 0
