"""``interleave serve generator``: the image generator as an OpenAI-style images server.

    interleave serve generator --model MODEL [--num-replicas N | --autoscale MIN:MAX]
        [--gpus-per-replica 1] [--max-batch 4] [--host 127.0.0.1] [--port 8000] [--address ADDR]
    interleave serve generator --model MODEL --no-ray [--device all]

With Ray (the ``serve`` extra), the pipeline is a Ray Serve deployment
(``tools.generator.ray_serve``): one replica per ``--gpus-per-replica`` GPUs, placed by Ray on
the cluster this process joins (``--address``, or ``$RAY_ADDRESS``; a cluster made with
``ray start``; with neither, Ray starts one on this machine). Without Ray (``--no-ray``), the
same FastAPI app runs under uvicorn in this process over the in-process pool of this machine's
GPUs. Either way the graph uses it with ``--generator-base-url http://HOST:PORT/v1``.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

log = logging.getLogger(__name__)


def add_commands(commands: argparse._SubParsersAction) -> None:
    serve = commands.add_parser("serve", help="serve the image generator over an OpenAI-style images API")
    what = serve.add_subparsers(dest="serve_command", required=True, metavar="WHAT")
    gen = what.add_parser(
        "generator",
        help="the diffusers pipeline as /v1/images/generations and /v1/images/edits",
        description="Deploy the generator pipeline as an images server: a Ray Serve deployment "
        "(one replica per GPU across the Ray cluster, batched by Ray Serve), or with "
        "--no-ray one process over this machine's GPUs.",
    )
    gen.add_argument("--model", required=True, help="diffusers model id or folder (any supported family)")
    count = gen.add_mutually_exclusive_group()
    count.add_argument("--num-replicas", type=int, default=1, help="fixed number of replicas (default 1)")
    count.add_argument(
        "--autoscale",
        metavar="MIN:MAX",
        default=None,
        help="let Ray Serve's autoscaler keep between MIN and MAX replicas",
    )
    gen.add_argument(
        "--gpus-per-replica",
        type=float,
        default=None,
        help="GPUs each replica asks Ray for (default 1 when this machine has a GPU, else 0)",
    )
    gen.add_argument("--cpus-per-replica", type=float, default=1.0, help="CPUs each replica asks Ray for")
    gen.add_argument(
        "--max-batch",
        type=int,
        default=4,
        help="most concurrent requests of a replica run as one pipeline call (default 4)",
    )
    gen.add_argument(
        "--batcher",
        choices=("serve", "worker"),
        default="serve",
        help="how a replica joins concurrent requests: serve = Ray Serve's @serve.batch (closes a batch "
        "on a timer); worker = our worker thread (takes what queued when the GPU frees; faster on one "
        "H200, see the README's Scaling out). Default serve",
    )
    gen.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0 for other machines)")
    gen.add_argument("--port", type=int, default=8000)
    gen.add_argument(
        "--address",
        default=None,
        help="Ray cluster to join (e.g. auto, or HOST:6379); default $RAY_ADDRESS or a new local one",
    )
    gen.add_argument(
        "--detach", action="store_true", help="deploy onto the Ray cluster and return, leaving the application running"
    )
    gen.add_argument(
        "--no-ray", action="store_true", help="serve from this process with uvicorn over the local pool (no Ray needed)"
    )
    gen.add_argument(
        "--device", default="auto", help="replica device (auto: its GPU); with --no-ray also all or cuda:0,cuda:1"
    )
    gen.add_argument("--dtype", default="auto")
    gen.add_argument("--lora", default=None, help="LoRA weights merged at load time")
    gen.add_argument("--lora-scale", type=float, default=1.0)
    gen.add_argument("--offload", choices=("none", "model", "sequential"), default="none")
    gen.add_argument(
        "--speedups",
        choices=("off", "on", "fp8"),
        default="off",
        help="FLUX.2-klein on CUDA: compiled blocks, fused qkv, CUDA-graph text encoder",
    )
    gen.add_argument("--compile-cache", default=None, help="folder for compiled artifacts (speedups)")


def _load_settings(args: argparse.Namespace) -> dict:
    return dict(
        device=args.device,
        dtype=args.dtype,
        lora=args.lora,
        lora_scale=args.lora_scale,
        offload=args.offload,
        speedups=args.speedups,
        compile_cache=str(Path(args.compile_cache).resolve()) if args.compile_cache else None,
    )


def cmd_serve(args: argparse.Namespace) -> int:
    from tools.generator import models as generator_models

    generator_models.model_spec(args.model)  # a ValueError (exit 2) before anything starts
    if args.max_batch < 1 or args.num_replicas < 1:
        raise ValueError("--max-batch and --num-replicas must be at least 1")
    if args.no_ray:
        return _serve_without_ray(args)
    return _serve_with_ray(args)


def _serve_without_ray(args: argparse.Namespace) -> int:
    import uvicorn

    from tools.generator import diffusion
    from tools.generator.serve_app import images_app, local_generate
    from tools.generator.worker import generator_devices, pool_for

    load = _load_settings(args)
    pool = pool_for(
        [
            diffusion.load_pipeline(args.model, device, **{k: v for k, v in load.items() if k != "device"})
            for device in generator_devices(args.device)
        ],
        args.max_batch,
    )
    app = images_app(local_generate(pool), model=args.model, spec=pool.spec)
    print(
        f"generator images API at http://{args.host}:{args.port}/v1 (no Ray, "
        f"{len(pool.workers)} pipeline(s)); Ctrl-C stops it",
        file=sys.stderr,
    )
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0


def _serve_with_ray(args: argparse.Namespace) -> int:
    try:
        import ray
        from ray import serve
    except ImportError:
        raise ValueError(
            "Ray Serve is not installed: pip install 'interleave-thinker[serve]' "
            "(or use --no-ray to serve from this process)"
        ) from None
    from tools.generator.ray_serve import generator_application, parse_autoscale

    autoscale = parse_autoscale(args.autoscale) if args.autoscale else None
    ray.init(address=args.address, logging_level=logging.WARNING)
    gpus = args.gpus_per_replica
    if gpus is None:
        gpus = 1.0 if ray.cluster_resources().get("GPU", 0) >= 1 else 0.0
    app = generator_application(
        args.model,
        num_replicas=args.num_replicas,
        autoscale=autoscale,
        gpus_per_replica=gpus,
        cpus_per_replica=args.cpus_per_replica,
        max_batch=args.max_batch,
        batcher=args.batcher,
        **_load_settings(args),
    )
    serve.start(http_options={"host": args.host, "port": args.port})
    serve.run(app, name="generator", route_prefix="/")
    replicas = f"{autoscale[0]}..{autoscale[1]}" if autoscale else str(args.num_replicas)
    print(
        f"generator images API at http://{args.host}:{args.port}/v1 (Ray Serve, {replicas} "
        f"replica(s), {gpus:g} GPU each); `serve status` shows health",
        file=sys.stderr,
    )
    if args.detach:
        return 0
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        serve.shutdown()
        return 0
