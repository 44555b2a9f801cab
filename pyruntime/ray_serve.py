"""`pyruntime serve --ray --replicas N`: the OpenAI-compatible app of pyruntime.server as a Ray
Serve deployment of N replicas, each a process with its own model, scheduler and KV cache, behind
Ray Serve's HTTP proxy, router and (optionally) autoscaler. Every response names the replica that
served it (header x-pyruntime-replica: host:pid).

On one machine a local Ray instance is started; to span machines, start Ray on each
(`ray start --head` on one, `ray start --address HEAD:6379` on the others, the model at the same
path on every node) and pass --ray-address auto on the head."""

from __future__ import annotations

import signal
import threading
import time


def deployment(model: str, model_name: str, replicas: int, threads: int, max_batch: int, api_key: str | None,
               llm_kwargs: dict):
    """The Ray Serve application: `replicas` copies of the app, each loading `model` itself."""
    from ray import serve

    def build():  # runs in each replica
        from pyruntime import LLM
        from pyruntime.server import create_app

        return create_app(LLM(model, threads=threads, progress=False, **llm_kwargs), model_name, max_batch, api_key)

    cls = serve.ingress(build)(type("PyruntimeReplica", (), {}))
    return serve.deployment(cls, name="pyruntime", num_replicas=replicas,
                            ray_actor_options={"num_cpus": threads},
                            max_ongoing_requests=4 * max_batch).bind()


def serve_ray(model: str, model_name: str, host: str, port: int, replicas: int, threads: int, max_batch: int,
              api_key: str | None, llm_kwargs: dict, address: str | None = None) -> None:
    """Starts (or joins, with address) a Ray cluster, deploys the replicas, and serves until
    SIGINT / SIGTERM; then shuts Serve and Ray down."""
    try:
        import ray
        from ray import serve
    except ImportError:
        raise ValueError("--ray needs Ray Serve: pip install 'ray[serve]'") from None
    if isinstance(replicas, bool) or not isinstance(replicas, int) or replicas < 1:
        raise ValueError(f"replicas must be an int >= 1, got {replicas!r}")
    ray.init(address=address, include_dashboard=False, log_to_driver=False)
    try:
        serve.start(http_options={"host": host, "port": port})
        serve.run(deployment(model, model_name, replicas, threads, max_batch, api_key, llm_kwargs),
                  name="pyruntime", route_prefix="/")
        # serve.run returns once the first replica answers; the others load their models meanwhile.
        while True:
            status = serve.status().applications["pyruntime"].deployments["pyruntime"]
            if status.replica_states.get("RUNNING", 0) >= replicas:
                break
            if status.status.name == "DEPLOY_FAILED":
                raise RuntimeError(f"the replicas failed to start: {status.message}")
            time.sleep(0.5)
        print(f"pyruntime: {replicas} replica(s) of {model_name} serving on http://{host}:{port}", flush=True)
        stop = threading.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stop.set())
        stop.wait()
    finally:
        serve.shutdown()
        ray.shutdown()
