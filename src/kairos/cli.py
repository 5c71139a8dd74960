"""``kairos`` command line. Flags are generated from the configuration dataclasses, so each
default and help text lives in exactly one place. Heavy imports happen inside commands."""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import types
import typing
from typing import TYPE_CHECKING, Any

from kairos.cluster.config import FleetConfig, RouterConfig
from kairos.config import CacheConfig, EngineConfig, ModelConfig, SchedulerConfig, SpeculativeConfig

if TYPE_CHECKING:
    from kairos.server.config import ServerConfig

# the HTTP server's settings a router has too
_ROUTER_HTTP = ("host", "port", "api_key", "max_body_bytes", "allowed_origins", "max_header_bytes", "header_timeout",
                "body_timeout", "max_connections", "chat_template")
_ENGINE_PARTS = (("model", ModelConfig), ("cache", CacheConfig), ("scheduler", SchedulerConfig),
                 ("speculative", SpeculativeConfig))


def _scalar_type(tp: Any) -> type:
    """``int | None`` -> int; the type argparse should convert a flag's text with."""
    if isinstance(tp, types.UnionType) or typing.get_origin(tp) is typing.Union:
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return args[0]
    return tp


def add_config_args(parser: argparse.ArgumentParser, cls: type, skip: tuple[str, ...] = (),
                    only: tuple[str, ...] | None = None) -> None:
    hints = typing.get_type_hints(cls)
    group = parser.add_argument_group(cls.__name__)
    for f in dataclasses.fields(cls):
        if f.name in skip or only is not None and f.name not in only:
            continue
        tp = _scalar_type(hints[f.name])
        flag = "--" + f.name.replace("_", "-")
        default = f.default if f.default is not dataclasses.MISSING else None
        if tp is bool:
            group.add_argument(flag, action=argparse.BooleanOptionalAction, default=default, help=f.metadata.get("help"))
        elif typing.get_origin(tp) is tuple:  # repeatable flag
            group.add_argument(flag, action="append", type=typing.get_args(tp)[0], default=None, help=f.metadata.get("help"))
        else:
            group.add_argument(flag, type=tp, default=default, help=f.metadata.get("help"))


def config_argv(obj: Any, skip: tuple[str, ...] = ()) -> list[str]:
    """The flags that rebuild ``obj`` (a configuration dataclass) from its defaults: the inverse
    of ``add_config_args`` for values that differ from them."""
    out: list[str] = []
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if f.name in skip or f.default is not dataclasses.MISSING and value == f.default:
            continue
        flag = "--" + f.name.replace("_", "-")
        if isinstance(value, bool):
            out.append(flag if value else "--no-" + flag[2:])
        elif isinstance(value, tuple):
            for v in value:
                out += [flag, str(v)]
        elif value is not None:
            out += [flag, str(value)]
    return out


def engine_config_from_args(args: argparse.Namespace) -> EngineConfig:
    parts = {}
    for name, cls in _ENGINE_PARTS:
        parts[name] = cls(**{f.name: getattr(args, f.name) for f in dataclasses.fields(cls)})
    return EngineConfig(**parts)


def _add_sampling_args(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("sampling")
    g.add_argument("--max-tokens", type=int, default=128)
    g.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    g.add_argument("--top-p", type=float, default=1.0)
    g.add_argument("--top-k", type=int, default=0)
    g.add_argument("--min-p", type=float, default=0.0)
    g.add_argument("--seed", dest="sample_seed", type=int, default=None, help="per-request seed")
    g.add_argument("--stop", action="append", default=[], help="stop string (repeatable)")
    g.add_argument("--n", type=int, default=1)


def cmd_generate(args: argparse.Namespace) -> int:
    import logging

    from kairos.engine.llm import LLM
    from kairos.wire.sampling_params import SamplingParams

    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    params = SamplingParams(max_tokens=args.max_tokens, temperature=args.temperature, top_p=args.top_p,
                            top_k=args.top_k, min_p=args.min_p, seed=args.sample_seed, stop=tuple(args.stop), n=args.n)
    cfg = engine_config_from_args(args)
    llm = LLM.from_config(cfg)
    if args.raw:
        outs = llm.generate(args.prompt, params)
    else:
        outs = llm.chat([{"role": "user", "content": args.prompt}], params)
    for o in outs[0].outputs:
        print(o.text)
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    import logging

    from kairos.server.config import ServerConfig

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(ServerConfig)}
    values["allowed_origins"] = tuple(values["allowed_origins"] or ())
    if values["api_key"] is None and "KAIROS_API_KEY" in os.environ:  # (a key on the command line shows in ps;
        values["api_key"] = os.environ["KAIROS_API_KEY"]  # set but empty is refused below, not an open server)
    try:
        server_cfg = ServerConfig(**values)
    except ValueError as e:
        print(f"kairos serve: {e}", file=sys.stderr)
        return 2
    engine_cfg = engine_config_from_args(args)
    fleet_cfg = FleetConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(FleetConfig)})
    if fleet_cfg.replicas > 1:
        from kairos.cluster.launch import run_router
        from kairos.cluster.local import LocalFleet

        router_cfg = _router_config(args, tokenizer=engine_cfg.model.model)
        replica_args = [a for part in (engine_cfg.model, engine_cfg.cache, engine_cfg.scheduler, engine_cfg.speculative)
                        for a in config_argv(part)]
        replica_args += config_argv(server_cfg, skip=("host", "port", "api_key", "allowed_origins"))
        env = {"KAIROS_API_KEY": server_cfg.api_key} if server_cfg.api_key else {}
        return _run(run_router(router_cfg, server_cfg, LocalFleet(fleet_cfg, replica_args, env)))
    from kairos.server.launch import serve

    return _run(serve(engine_cfg, server_cfg))


def _run(main) -> int:
    import asyncio

    try:  # (uvicorn[standard]) a faster event loop: less of the API process per streamed token
        import uvloop

        run = uvloop.run
    except (ImportError, AttributeError):  # (uvloop.run came in 0.18)
        run = asyncio.run
    return run(main)


def _router_config(args: argparse.Namespace, **given) -> RouterConfig:
    values = {f.name: getattr(args, f.name, None) for f in dataclasses.fields(RouterConfig)}
    values["upstream"] = tuple(values["upstream"] or ())
    values.update({k: v for k, v in given.items() if values.get(k) is None})
    return RouterConfig(**{k: v for k, v in values.items() if v is not None})


def _http_config(args: argparse.Namespace) -> ServerConfig:
    from kairos.server.config import ServerConfig

    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(ServerConfig) if hasattr(args, f.name)}
    values["allowed_origins"] = tuple(values.get("allowed_origins") or ())
    if values.get("api_key") is None and "KAIROS_API_KEY" in os.environ:
        values["api_key"] = os.environ["KAIROS_API_KEY"]
    return ServerConfig(**values)


def cmd_router(args: argparse.Namespace) -> int:
    import logging

    from kairos.cluster.launch import run_router

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        cfg, http = _router_config(args), _http_config(args)
        if not cfg.upstream:
            raise ValueError("give at least one --upstream URL")
    except ValueError as e:
        print(f"kairos router: {e}", file=sys.stderr)
        return 2
    return _run(run_router(cfg, http))


def cmd_bench(args: argparse.Namespace) -> int:
    from rich.console import Console

    from kairos.bench.config import BenchConfig
    from kairos.bench.main import BenchError, run_bench
    from kairos.bench.report import compare

    console = Console()
    try:
        if args.bench_command == "compare":
            compare(args.a, args.b, console)
            return 0
        values = {f.name: getattr(args, f.name) for f in dataclasses.fields(BenchConfig)}
        values["slo"] = tuple(values["slo"] or ())
        if values["api_key"] is None and os.environ.get("OPENAI_API_KEY"):  # as vLLM's benchmark client
            values["api_key"] = os.environ["OPENAI_API_KEY"]
        run_bench(BenchConfig(**values), console)
    except (BenchError, OSError) as e:
        console.print(f"[red]kairos bench: {e}[/red]")
        return 1
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kairos", description="Kairos: deadline-aware LLM serving")
    sub = parser.add_subparsers(dest="command", required=True)
    gen = sub.add_parser("generate", help="complete one prompt offline and print the text",
                         formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    gen.add_argument("prompt")
    gen.add_argument("--raw", action="store_true", help="plain completion: no chat template")
    for _, cls in _ENGINE_PARTS:
        add_config_args(gen, cls, skip=("seed",) if cls is ModelConfig else ())
    gen.set_defaults(seed=0)
    _add_sampling_args(gen)
    gen.set_defaults(func=cmd_generate)

    from kairos.server.config import ServerConfig

    srv = sub.add_parser("serve", help="serve a model over an OpenAI-compatible HTTP API",
                         formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_config_args(srv, ServerConfig)
    for _, cls in _ENGINE_PARTS:
        add_config_args(srv, cls)
    add_config_args(srv, FleetConfig)
    add_config_args(srv, RouterConfig, skip=("upstream",))
    srv.set_defaults(func=cmd_serve)

    rt = sub.add_parser("router", help="one OpenAI endpoint over OpenAI-compatible servers already running",
                        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_config_args(rt, RouterConfig)
    add_config_args(rt, ServerConfig, only=_ROUTER_HTTP)
    rt.set_defaults(func=cmd_router)

    from kairos.bench.config import BenchConfig

    bench = sub.add_parser("bench", help="load-test any OpenAI-compatible server (goodput, SLO attainment)",
                           formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_config_args(bench, BenchConfig)
    bench_sub = bench.add_subparsers(dest="bench_command")
    cmp = bench_sub.add_parser("compare", help="print two result files side by side with ratios")
    cmp.add_argument("a")
    cmp.add_argument("b")
    bench.set_defaults(func=cmd_bench)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, TypeError) as e:  # bad input: one clear line, no traceback
        print(f"kairos: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
