"""`streamscore registry init|register|list|show|promote|rollback|retire|report|replay|history`: the
model and feature registry (package ``registry``) from the command line."""
from __future__ import annotations

import argparse
import functools
import json
import os
import sys

EXAMPLES = """examples:
  streamscore registry init
  streamscore registry register fraud models/fraud.onnx --reason "trained on March data" \\
      --metadata run=2024-03-31 --metadata auc=0.91 --feature-set customers
  streamscore registry register fraud models:/fraud@champion --reason "from MLflow"
  streamscore registry promote fraud 2 integration --reason "passes the offline check"
  streamscore registry promote fraud 2 qa --features customers@3 --reason "QA sign-off"
  streamscore registry promote fraud 3 --env production --role shadow --reason "score live traffic beside v2"
  streamscore registry promote fraud 4 --env production --role canary --share 0.1 --reason "serve 10 %"
  streamscore registry retire fraud 3 --env production --role shadow --reason "evidence collected"
  streamscore registry rollback fraud qa --reason "score drift"
  streamscore registry show fraud/2          # sha256, schema, metadata of a version
  streamscore registry show fraud --env qa   # what qa serves (revision, champion, snapshot)
  streamscore registry show customers@3      # a feature snapshot: URI, rows, checksum
  streamscore registry history fraud --env qa
  streamscore registry replay fraud --env production --candidate 3 --config job.yaml \\
      --from-offsets 0=120000,1=118500 --to-offsets 0=170000,1=168500

The registry is --registry URI, else $STREAMSCORE_REGISTRY, else a SQLite file under the cache
dir ($STREAMSCORE_CACHE, default ~/.cache/streamscore/registry.db). PostgreSQL:
postgresql://user@host:5432/db[?schema=NAME]."""


def register(subparsers) -> None:
    reg = subparsers.add_parser(
        "registry", help="model and feature registry: register, promote, roll back, audit",
        description="Model versions and feature snapshots (immutable), environments with a promotion "
        "policy, deployments (one champion per model and environment) and an append-only audit log, on "
        "SQLite or PostgreSQL.", epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = reg.add_subparsers(dest="registry_command", metavar="ACTION")
    reg.set_defaults(func=lambda args: (reg.print_help(), 2)[1])

    p = _sub(sub, "init", "create the registry tables (idempotent) and configure environments",
             "Create the tables and the append-only triggers. --env, repeated in promotion order, replaces the "
             "environments: NAME, NAME:gated (a version must have been champion in the previous environment) "
             "or NAME:open; append ;events=FIELD:TYPE,... to declare the event fields its jobs receive. "
             "Default on a new registry: integration, qa:gated, production:gated.",
             'streamscore registry init --env dev --env prod:gated\n'
             '  streamscore registry init --env "integration;events=amount:double,hour:int" --env qa:gated')
    p.add_argument("--env", action="append", dest="envs", metavar="SPEC", help="environment spec (repeatable, in order)")
    _common_args(p)
    p.set_defaults(func=cmd_init)

    p = _sub(sub, "register", "register a model artifact as the next version",
             "Fetch the artifact (path, file://, s3://, hdfs://, models:/NAME/V or models:/NAME@ALIAS), record "
             "its sha256 and size, load it with model_formats (a corrupt model is refused) and record its "
             "input/output schema.",
             "streamscore registry register fraud models/fraud.onnx --reason 'first model' --metadata auc=0.91")
    p.add_argument("name")
    p.add_argument("artifact", help="model URI or path")
    p.add_argument("--metadata", action="append", default=[], metavar="KEY=VALUE", help="free metadata (repeatable)")
    p.add_argument("--feature-set", help="snapshot NAME or NAME@VERSION the model was trained on")
    _change_args(p)
    p.set_defaults(func=cmd_register)

    p = _sub(sub, "list", "list models (or the versions of one model, or feature snapshots)",
             "Without NAME: every model with its versions and deployments. With NAME: its versions.",
             "streamscore registry list\n  streamscore registry list fraud\n  streamscore registry list --snapshots")
    p.add_argument("name", nargs="?")
    p.add_argument("--snapshots", action="store_true", help="list feature snapshots instead")
    _common_args(p)
    p.set_defaults(func=cmd_list)

    p = _sub(sub, "show", "show a model version, a deployment or a feature snapshot",
             "NAME/VERSION: the version (sha256, size, URI, schema, metadata); NAME --env ENV: the deployment; "
             "NAME@VERSION: a feature snapshot; NAME: the model's versions and deployments.",
             "streamscore registry show fraud/3\n  streamscore registry show fraud --env production\n"
             "  streamscore registry show customers@2")
    p.add_argument("ref", metavar="REF")
    p.add_argument("--env", help="show the deployment of the model in this environment")
    _common_args(p)
    p.set_defaults(func=cmd_show)

    p = _sub(sub, "promote", "make a version the champion of an environment",
             "Checks the environment's policy (champion in the previous environment first) and that the pinned "
             "feature snapshot plus the event fields provide every model input; a refusal names the mismatch "
             "and is written to the audit log. Two concurrent promotions: one wins, the other fails with a "
             "conflict.", "streamscore registry promote fraud 3 production --reason 'QA passed' --features customers@4")
    p.add_argument("name")
    p.add_argument("version")
    p.add_argument("env", nargs="?", help="the environment (or --env)")
    p.add_argument("--env", dest="env_option", metavar="ENV", help="the environment (instead of the positional)")
    p.add_argument("--role", choices=("champion", "shadow", "canary"), default="champion",
                   help="champion (default); shadow: scored beside the champion on every event, predictions to "
                   "the shadow topic, never served; canary: serves --share of the entities (replaces a canary)")
    p.add_argument("--share", type=float, metavar="SHARE", help="canary: share of the entities it serves "
                   "(default 0.1; 0 ends the canary)")
    p.add_argument("--features", metavar="SNAPSHOT[@VERSION]", help="feature snapshot to pin (default: the one "
                   "pinned now, else the newest of the model's feature set)")
    p.add_argument("--event-fields", metavar="FIELD[:TYPE],...", help="event fields beyond the environment's")
    p.add_argument("--expected-revision", type=int, help="refuse unless the deployment is at this revision")
    gate = p.add_argument_group("gate", "refuse unless the version's recorded comparison with the champion of "
                                "ENV (shadow/canary scoring on live traffic, `registry report`) meets these; the "
                                "decision and the numbers go to the audit log")
    gate.add_argument("--require-agreement", type=float, metavar="SHARE", help="minimum label agreement, e.g. 0.98")
    gate.add_argument("--min-compared", type=int, default=1, metavar="N", help="minimum events compared (default 1)")
    gate.add_argument("--max-psi", type=float, metavar="PSI", help="maximum PSI of its scores against the champion's")
    _change_args(p)
    p.set_defaults(func=cmd_promote)

    p = _sub(sub, "rollback", "return an environment to its previous champion",
             "One command back to the champion (and feature snapshot) served before the current one.",
             "streamscore registry rollback fraud production --reason 'latency regression'")
    p.add_argument("name")
    p.add_argument("env")
    _change_args(p)
    p.set_defaults(func=cmd_rollback)

    p = _sub(sub, "retire", "mark a version as not promotable any more, or end its shadow/canary role",
             "A retired version stays in the registry (immutable) but cannot be promoted; a serving version "
             "cannot be retired. With --env and --role shadow|canary: end that role of the version in ENV "
             "(the job stops scoring it; the version stays promotable).",
             "streamscore registry retire fraud 1 --reason 'superseded'\n"
             "  streamscore registry retire fraud 3 --env production --role shadow --reason 'enough evidence'")
    p.add_argument("name")
    p.add_argument("version")
    p.add_argument("--env", help="with --role: the environment whose shadow/canary ends")
    p.add_argument("--role", choices=("shadow", "canary"), help="end this role of the version in --env")
    _change_args(p)
    p.set_defaults(func=cmd_retire)

    p = _sub(sub, "report", "the champion/challenger comparison recorded in an environment",
             "The in-stream comparison of each challenger (shadow or canary) with the champion: events compared, "
             "label agreement, the flip matrix, |score difference|, PSI. --html writes a self-contained page "
             "(no network needed to view it) with plots of agreement over time, both score distributions, the "
             "flip matrix and latency per model. Windows of a replay (`registry replay`) are shown apart, "
             "source replay; live ones are source live.",
             "streamscore registry report fraud --env production --html fraud-report.html")
    p.add_argument("name")
    p.add_argument("--env", required=True)
    p.add_argument("--challenger", type=int, metavar="VERSION", help="one challenger (default: each compared one)")
    p.add_argument("--html", metavar="FILE", help="also write the report as one HTML page")
    _common_args(p)
    p.set_defaults(func=cmd_report)

    p = _sub(sub, "replay", "score a candidate on a recorded range of the input topic, beside the champion of then",
             "Runs the Beam pipeline's bounded mode (DirectRunner) over the input topic from --from-offsets up to "
             "(not including) --to-offsets, with the champion of NAME in ENV at that time serving and the "
             "candidate VERSION as a shadow, enriched from the feature snapshot that was live then (the store "
             "the config names if it serves that snapshot, else the registry's durable copy in a private "
             "store; a snapshot no longer held is refused). 'That time': the Kafka timestamps of the range's "
             "first and last records against the deployment's champion changes; a range in which the champion "
             "or snapshot changed is refused. Comparison windows are event-time windows of "
             "model.comparison_window_s, recorded in the registry as a replay (scorer -1, source replay): "
             "`registry report` shows them apart, and a gated promote does not count them (live evidence "
             "only). Predictions, shadow predictions, dead letters and comparisons go to JSON-lines files "
             "(--output), never to the live topics. Prints the report table of the replay.",
             "streamscore registry replay fraud --env production --candidate 3 --config job.yaml \\\n"
             "      --from-offsets 0=120000,1=118500 --to-offsets 0=170000,1=168500")
    p.add_argument("name")
    p.add_argument("--env", required=True)
    p.add_argument("--candidate", required=True, metavar="VERSION", help="the version to score as a shadow")
    p.add_argument("--config", "-c", required=True, help="the job YAML: kafka (input topic), events, features.store")
    p.add_argument("--set", "-s", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override a config value (repeatable), e.g. --set model.comparison_window_s=60")
    p.add_argument("--from-offsets", required=True, metavar="P=OFFSET,...",
                   help="first offset replayed, per partition (every partition of the input topic)")
    p.add_argument("--to-offsets", required=True, metavar="P=OFFSET,...",
                   help="end of the range, per partition: the offset after the last record replayed")
    p.add_argument("--output", metavar="PREFIX", help="JSON-lines files PREFIX-{predictions,shadow,dead-letters,"
                   "comparisons}*.jsonl (default ./replay-NAME-vVERSION-<time>)")
    _common_args(p)
    p.set_defaults(func=cmd_replay)

    p = _sub(sub, "history", "the audit log, newest first",
             "Every register, publish, promote, rollback, retire and refusal (by promote or by a running job) "
             "with actor, time, from -> to and reason.",
             "streamscore registry history fraud --env production --limit 20")
    p.add_argument("name", nargs="?")
    p.add_argument("--env")
    p.add_argument("--limit", type=int, default=50)
    _common_args(p)
    p.set_defaults(func=cmd_history)


def _sub(sub, name: str, help_: str, description: str, examples: str):
    return sub.add_parser(name, help=help_, description=description, epilog=f"example:\n  {examples}",
                          formatter_class=argparse.RawDescriptionHelpFormatter)


def _common_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--registry", default=None, metavar="URI",
                   help="registry URI (default $STREAMSCORE_REGISTRY, else a SQLite file in the cache dir)")
    p.add_argument("--json", action="store_true", help="print JSON instead of tables")


def _change_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--reason", required=True, help="why (required; goes to the audit log)")
    p.add_argument("--actor", default=None, help="who (default user@host)")
    _common_args(p)


def registry_errors(func):
    """RegistryError -> the CLI's one-line UserError."""
    @functools.wraps(func)
    def wrapper(args):
        from jobs.errors import UserError
        from registry import RegistryError

        try:
            return func(args)
        except RegistryError as exc:
            raise UserError(str(exc)) from exc
    return wrapper


def open_from_args(args):
    from registry import open_registry

    return open_registry(getattr(args, "registry", None) or None)


def _actor(args) -> str:
    from registry import default_actor

    return args.actor or default_actor()


def _console():
    from rich.console import Console

    # piped: wide enough for the tables, and messages never hard-wrapped (a long path stays greppable)
    piped = not sys.stdout.isatty()
    return Console(width=140 if piped else None, soft_wrap=piped)


def _print_json(data) -> None:
    print(json.dumps(data, indent=2, default=str))


def _when(dt) -> str:
    return dt.strftime("%Y-%m-%d %H:%M:%S") if dt else ""


# --- commands ---------------------------------------------------------------------------------

def parse_env_spec(spec: str, position: int):
    """``qa:gated;events=amount:double,hour`` -> Environment."""
    from registry import Environment
    from registry.snapshots import parse_event_fields

    head, _, rest = spec.partition(";")
    name, _, mode = head.partition(":")
    if mode not in ("", "open", "gated"):
        raise ValueError(f"--env {spec!r}: mode {mode!r} is neither open nor gated")
    events = None
    if rest:
        key, _, value = rest.partition("=")
        if key.strip() != "events":
            raise ValueError(f"--env {spec!r}: expected ;events=FIELD:TYPE,...")
        events = parse_event_fields(value)
    return Environment(name.strip(), position, requires_previous_champion=mode == "gated", event_fields=events)


@registry_errors
def cmd_init(args) -> int:
    reg = open_from_args(args)
    envs = [parse_env_spec(s, i) for i, s in enumerate(args.envs)] if args.envs else None
    reg.init(envs)
    configured = reg.environments()
    if args.json:
        _print_json({"registry": repr(reg), "environments": [e.__dict__ for e in configured]})
        return 0
    chain = " -> ".join(f"{e.name}{' (gated)' if e.requires_previous_champion else ''}" for e in configured)
    _console().print(f"registry ready: {reg._safe_uri()}{f' schema {reg.schema}' if reg.schema else ''}; "
                     f"environments {chain}")
    return 0


def _parse_metadata(items: list[str]) -> dict:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--metadata {item!r}: expected KEY=VALUE")
        try:
            out[key] = json.loads(value)        # numbers, booleans, JSON objects stay typed
        except ValueError:
            out[key] = value
    return out


@registry_errors
def cmd_register(args) -> int:
    reg = open_from_args(args)
    mv = reg.register_model(args.name, args.artifact, actor=_actor(args), reason=args.reason,
                            metadata=_parse_metadata(args.metadata), feature_set=args.feature_set)
    if args.json:
        _print_json(mv.to_dict())
        return 0
    _console().print(f"registered [bold]{mv.ref}[/bold]: {mv.format}, {mv.size:,} bytes, sha256 {mv.sha256[:16]}…, "
                     f"{len(mv.input_schema)} inputs" + (f", feature set {mv.feature_set}" if mv.feature_set else ""))
    return 0


@registry_errors
def cmd_list(args) -> int:
    from rich.table import Table

    reg = open_from_args(args)
    if args.snapshots:
        snaps = reg.snapshots(args.name)
        if args.json:
            _print_json([s.to_dict() for s in snaps])
            return 0
        t = Table(title="feature snapshots")
        for col in ("snapshot", "rows", "key", "fingerprint", "uri", "created"):
            t.add_column(col)
        for s in snaps:
            t.add_row(s.ref, f"{s.row_count:,}", s.key_column, s.schema_fingerprint[:12], s.uri, _when(s.created_at))
        _console().print(t)
        return 0
    versions = reg.model_versions(args.name)
    deployments = reg.deployments(args.name)
    serving: dict[tuple[str, int], list[str]] = {}
    for d in deployments:
        serving.setdefault((d.name, d.champion.version), []).append(f"{d.env} (r{d.revision})")
    if args.json:
        _print_json({"versions": [v.to_dict() for v in versions], "deployments": [d.to_dict() for d in deployments]})
        return 0
    t = Table(title="model versions" if args.name is None else f"versions of {args.name}")
    for col in ("model", "version", "format", "sha256", "feature set", "champion in", "created", "by", "retired"):
        t.add_column(col)
    for v in versions:
        t.add_row(v.name, str(v.version), v.format, v.sha256[:12], str(v.feature_set or ""),
                  ", ".join(serving.get((v.name, v.version), [])), _when(v.created_at), v.created_by,
                  "yes" if v.retired else "")
    _console().print(t)
    return 0


@registry_errors
def cmd_show(args) -> int:
    from rich.table import Table

    reg = open_from_args(args)
    console = _console()
    ref = args.ref
    if args.env:
        d = reg.deployment(ref, args.env)
        if d is None:
            from registry import NotFound
            reg.environment(args.env)
            reg.model_versions(ref)                       # NotFound for an unknown model
            raise NotFound(f"deployment of {ref} in", args.env,
                           [d.env for d in reg.deployments(ref)])
        if args.json:
            _print_json(d.to_dict())
            return 0
        f = d.features
        console.print(f"[bold]{d.name}[/bold] in [bold]{d.env}[/bold]: revision {d.revision}, champion "
                      f"v{d.champion.version} (sha256 {d.champion.sha256}), features {f.ref + ' ' + f.uri if f else 'none'}"
                      f"; changed {_when(d.updated_at)} by {d.updated_by}")
        for shadow in d.shadows:
            console.print(f"  shadow v{shadow.version} (sha256 {shadow.sha256})")
        if d.canary is not None:
            console.print(f"  canary v{d.canary.version} (sha256 {d.canary.sha256}) serving "
                          f"{d.canary_share:.1%} of the entities")
        return 0
    if "@" in ref:
        s = reg.snapshot(ref)
        if args.json:
            _print_json(s.to_dict())
            return 0
        console.print(f"[bold]{s.ref}[/bold]: {s.row_count:,} rows keyed by {s.key_column}\n  uri {s.uri}\n"
                      f"  checksum {s.checksum}\n  schema fingerprint {s.schema_fingerprint}\n"
                      f"  created {_when(s.created_at)} by {s.created_by}")
        t = Table(title="columns")
        t.add_column("name")
        t.add_column("type")
        for c in s.columns:
            t.add_row(c["name"], c["type"])
        console.print(t)
        return 0
    if "/" in ref:
        name, version = ref.split("/", 1)
        mv = reg.model_version(name, version)
        if args.json:
            _print_json(mv.to_dict())
            return 0
        console.print(f"[bold]{mv.ref}[/bold] ({mv.format}{', retired' if mv.retired else ''})\n  uri {mv.uri}\n"
                      f"  sha256 {mv.sha256}\n  size {mv.size:,} bytes\n  feature set {mv.feature_set or 'none'}\n"
                      f"  created {_when(mv.created_at)} by {mv.created_by}")
        t = Table(title="inputs")
        for col in ("name", "dtype", "required"):
            t.add_column(col)
        for f in mv.input_schema:
            t.add_row(f["name"], f["dtype"], "yes" if f.get("required", True) else "no")
        console.print(t)
        if mv.metadata:
            t = Table(title="metadata")
            t.add_column("key")
            t.add_column("value")
            for k, v in mv.metadata.items():
                t.add_row(k, v if isinstance(v, str) else json.dumps(v, default=str))
            console.print(t)
        return 0
    args.name, args.snapshots = ref, False
    return cmd_list.__wrapped__(args)


def _print_deployment(args, d, verb: str) -> int:
    if args.json:
        _print_json(d.to_dict())
        return 0
    extra = "".join([f", shadow v{s.version}" for s in d.shadows] +
                    ([f", canary v{d.canary.version} for {d.canary_share:.0%} of entities"] if d.canary else []))
    _console().print(f"{verb}: [bold]{d.name}[/bold] in [bold]{d.env}[/bold] serves v{d.champion.version}"
                     f"{' with ' + d.features.ref if d.features else ''}{extra} (revision {d.revision})")
    return 0


@registry_errors
def cmd_promote(args) -> int:
    reg = open_from_args(args)
    gate = None
    if args.require_agreement is not None or args.max_psi is not None or args.min_compared != 1:
        from registry import Gate
        gate = Gate(min_agreement=args.require_agreement if args.require_agreement is not None else 0.0,
                    min_compared=args.min_compared, max_psi=args.max_psi)
    from jobs.errors import UserError
    if (args.env is None) == (args.env_option is None):
        raise UserError("name the environment once: `promote NAME VERSION ENV` or `--env ENV`")
    env = args.env or args.env_option
    d = reg.promote(args.name, args.version, env, actor=_actor(args), reason=args.reason,
                    features=args.features, event_fields=args.event_fields, expected_revision=args.expected_revision,
                    gate=gate, role=args.role, share=args.share)
    return _print_deployment(args, d, "promoted" if args.role == "champion" else f"{args.role} set")


@registry_errors
def cmd_report(args) -> int:
    from registry import NotFound

    reg = open_from_args(args)
    reg.environment(args.env)
    if args.name not in reg.model_names():
        raise NotFound("model", args.name, reg.model_names())
    windows = reg.comparisons(args.name, args.env, args.challenger)
    if not windows:
        from jobs.errors import UserError
        which = f"v{args.challenger} of " if args.challenger else ""
        raise UserError(f"no comparison recorded for {which}{args.name} in {args.env} (shadow or canary "
                        "scoring records one window every few seconds while the job runs)")
    pairs: dict[tuple[str, str, str], list[dict]] = {}
    for w in windows:
        pairs.setdefault((w["champion"], w["challenger"], w.get("source") or "live"), []).append(w)
    if args.html:
        from pathlib import Path

        from jobs.experiment_report import render_html
        (champion, challenger, source), ws = max(pairs.items(), key=lambda kv: sum(w["compared"] for w in kv[1]))
        Path(args.html).write_text(render_html(ws, f"{args.name} in {args.env}: {champion} vs {challenger}"
                                                   + (" (replay)" if source == "replay" else "")))
    print_comparisons(args, f"{args.name} in {args.env}: challengers against the champion", pairs)
    if args.json:
        return 0
    if args.html:
        _console().print(f"report written to {args.html}")
    return 0


def print_comparisons(args, title: str, pairs: dict[tuple[str, str, str], list[dict]]) -> list[dict]:
    """The report table (or JSON with --json): one row per (champion, challenger, source) with its
    windows merged; ``source`` live (scored beside the serving champion) or replay."""
    from operators.experiments import merge_windows

    totals = [{**merge_windows(ws), "source": source} for (_, _, source), ws in pairs.items()]
    if args.json:
        _print_json(totals)
        return totals
    from rich.table import Table

    table = Table(title=title)
    for col in ("champion", "challenger", "source", "windows", "compared", "agreement", "|diff| mean",
                "|diff| p99 max", "PSI"):
        table.add_column(col, justify="right" if col not in ("champion", "challenger", "source") else "left")
    for t in totals:
        table.add_row(t["champion"], t["challenger"], t["source"], str(t["windows"]), f"{t['compared']:,}",
                      _num(t["agreement"]), _num(t["score_diff_mean"]), _num(t["score_diff_p99_max"]), _num(t["psi"]))
    console = _console()
    console.print(table)
    for t in totals:
        flips = ", ".join(f"{f['champion']}->{f['challenger']}: {f['count']:,}" for f in t["flips"])
        console.print(f"flips {t['champion']} -> {t['challenger']} ({t['source']}): {flips}")
    return totals


@registry_errors
def cmd_replay(args) -> int:
    import time

    from jobs.beam_cmd import offsets
    from jobs.config import load_config
    from jobs.errors import UserError
    from jobs.replay import ReplayRefused, replay
    from registry import default_registry_uri

    try:
        from_offsets, to_offsets = offsets(args.from_offsets), offsets(args.to_offsets)
    except argparse.ArgumentTypeError as exc:
        raise UserError(str(exc)) from None
    cfg = load_config(args.config, list(args.set))
    output = args.output or f"replay-{args.name}-v{args.candidate}-{time.strftime('%Y%m%dT%H%M%S')}/replay"
    say = (lambda _: None) if args.json else (lambda line: _console().print(line, markup=False))
    try:
        result = replay(cfg, registry=getattr(args, "registry", None) or default_registry_uri(), name=args.name,
                        env=args.env, candidate=args.candidate, from_offsets=from_offsets, to_offsets=to_offsets,
                        output_prefix=output, say=say)
    except ReplayRefused as exc:
        raise UserError(f"replay refused: {exc}") from None
    if not result.windows:
        raise UserError(f"the replay compared nothing: {result.counts.get('predictions', 0):,} predictions, "
                        f"{result.counts.get('shadow', 0):,} shadow predictions (outputs in {output}-*.jsonl)")
    pairs: dict[tuple[str, str, str], list[dict]] = {}
    for w in result.windows:
        pairs.setdefault((w["champion"], w["challenger"], "replay"), []).append(w)
    print_comparisons(args, f"replay of {args.name} in {args.env}: v{args.candidate} against the champion of then",
                      pairs)
    if not args.json:
        c = result.counts
        say(f"{c['predictions']:,} predictions, {c['shadow']:,} shadow predictions, {c['dead-letters']:,} dead "
            f"letters in {output}-*.jsonl; {len(result.windows)} windows recorded as a replay "
            f"(`streamscore registry report {args.name} --env {args.env}`)")
    return 0


def _num(value) -> str:
    return "n/a" if value is None else f"{value:.4f}"


@registry_errors
def cmd_rollback(args) -> int:
    reg = open_from_args(args)
    d = reg.rollback(args.name, args.env, actor=_actor(args), reason=args.reason)
    return _print_deployment(args, d, "rolled back")


@registry_errors
def cmd_retire(args) -> int:
    reg = open_from_args(args)
    if args.role or args.env:
        from jobs.errors import UserError
        if not (args.role and args.env):
            raise UserError("ending a role needs both --env and --role (shadow or canary)")
        d = reg.end_role(args.name, args.version, args.env, args.role, actor=_actor(args), reason=args.reason)
        return _print_deployment(args, d, f"{args.role} v{args.version} ended")
    mv = reg.retire(args.name, args.version, actor=_actor(args), reason=args.reason)
    if args.json:
        _print_json(mv.to_dict())
    else:
        _console().print(f"retired {mv.ref}")
    return 0


@registry_errors
def cmd_history(args) -> int:
    from rich.table import Table

    reg = open_from_args(args)
    if args.name:
        names = set(reg.model_names()) | set(reg.snapshot_names())
        if args.name not in names:
            from registry import NotFound
            raise NotFound("model or snapshot", args.name, sorted(names))
    if args.env:
        reg.environment(args.env)
    entries = reg.history(args.name, args.env, args.limit)
    if args.json:
        _print_json([e.to_dict() for e in entries])
        return 0
    t = Table(title="audit log (newest first)")
    for col in ("#", "time (UTC)", "actor", "action", "name", "env", "from -> to", "features", "rev", "reason"):
        t.add_column(col)
    for e in entries:
        move = f"{e.from_version if e.from_version is not None else '-'} -> " \
               f"{e.to_version if e.to_version is not None else '-'}"
        reason = e.reason
        if e.detail.get("refusal"):
            reason += f" [red](refused: {e.detail['refusal']})[/red]"
        elif e.detail.get("error"):
            reason += f" [red]({e.detail['error']})[/red]"
        t.add_row(str(e.id), _when(e.at), e.actor, e.action, e.name, e.env or "", move, e.features or "",
                  str(e.revision or ""), reason)
    _console().print(t)
    return 0


@registry_errors
def cmd_publish(args) -> int:
    """`streamscore features publish`: write the table as Parquet under --to and register a snapshot."""
    from connectors.feature_store import read_table_file
    from registry import write_dataset

    reg = open_from_args(args)
    table = read_table_file(args.file)
    if args.key not in table.column_names:
        raise ValueError(f"{args.file}: no key column {args.key!r} (columns: {', '.join(table.column_names[:20])})")
    to = args.to or os.environ.get("STREAMSCORE_FEATURES_URI")
    if not to:
        from registry.artifacts import default_cache_dir
        to = str(default_cache_dir() / "snapshots")
    uri = write_dataset(table, to, args.name)
    snap = reg.register_snapshot(args.name, uri, key_column=args.key, actor=_actor(args), reason=args.reason)
    if args.json:
        _print_json(snap.to_dict())
        return 0
    _console().print(f"published [bold]{snap.ref}[/bold]: {snap.row_count:,} rows at {snap.uri} "
                     f"(checksum {snap.checksum[:16]}…)")
    return 0


def add_publish_parser(sub) -> None:
    """`features publish` (registered by jobs.features_cmd)."""
    p = sub.add_parser("publish", help="write a table to durable storage as Parquet and register it as a snapshot",
                       description="Write the table (.parquet/.csv/.arrow) as a new Parquet file under --to "
                       "(a folder, s3://bucket/prefix or hdfs://…; default $STREAMSCORE_FEATURES_URI, else "
                       "the cache dir) and register it in the registry as the next snapshot of --name.",
                       epilog="example:\n  streamscore features publish customers.parquet --name customers "
                       "--to s3://features/ --reason 'nightly build'",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("file")
    p.add_argument("--name", required=True, help="snapshot name")
    p.add_argument("--to", help="durable storage base URI")
    p.add_argument("--key", default="entity_id", help="entity key column (default entity_id)")
    _change_args(p)
    p.set_defaults(func=cmd_publish)
