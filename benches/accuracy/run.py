"""Side by side on public ground truth: cdp's streaming matcher and Splink's batch linkage over
the same records, scored by one rule. Prints a Markdown table (the one in the README).

    python run.py --cdp PATH/TO/cdp [--sets febrl1,febrl2,febrl3,febrl4,generated] [--work DIR]

For each set, cdp runs as a user runs it: the records go onto the CRM raw topic, `cdp run
--until-drained` ingests, matches and resolves them one at a time (each record is compared with
its blocking candidates as it arrives), and `cdp eval` scores the profiles. It runs twice: with
the built-in model, and with a model `cdp match train` fitted on the set (trained on a run with
matching off, as a user trains on history before turning matching on), as Splink also fits its
model on the data it links. cdp's rate is records per second of the whole process (start-up
included), and of the resolver alone as the pipeline reports it; training time is shown apart.
Splink's rate is records per second of its whole batch job, training included.
"""

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import febrl
import generated
import scores
import splink_baseline


def write_config(base: Path, out: Path, **matching) -> Path:
    """The harness's config with `[resolver.matching]` keys overridden."""
    config = tomllib.loads(base.read_text())
    config["resolver"]["matching"] |= matching
    lines = []

    def table(name, values):
        scalars = {k: v for k, v in values.items() if not isinstance(v, dict)}
        if scalars:
            lines.append(f"[{name}]")
            lines.extend(f"{k} = {json.dumps(v)}" for k, v in scalars.items())
        for k, v in values.items():
            if isinstance(v, dict):
                table(f"{name}.{k}", v)

    for name, values in config.items():
        table(name, values)
    out.write_text("\n".join(lines) + "\n")
    return out


def train(cdp: str, config: Path, data: Path, model: Path, sample: int) -> float:
    """Fits a model on the state in `data`; returns the seconds it took."""
    started = time.perf_counter()
    subprocess.run(
        [cdp, "--data", str(data), "--config", str(config), "match", "train",
         "--sample", str(sample), "--out", str(model)],
        env=dict(os.environ, CDP_HTTP__LISTEN=""), capture_output=True, text=True, check=True,
    )
    return time.perf_counter() - started


def run_cdp(cdp: str, config: Path, workload: Path, data: Path):
    """Runs the pipeline over the workload; returns (scores, wall seconds, resolver records/s)."""
    if data.exists():
        shutil.rmtree(data)
    env = dict(os.environ, CDP_HTTP__LISTEN="")
    base = [cdp, "--data", str(data), "--config", str(config)]
    started = time.perf_counter()
    run = subprocess.run(
        base + ["run", "--input", str(workload), "--until-drained"],
        env=env, capture_output=True, text=True,
    )
    wall = time.perf_counter() - started
    if run.returncode != 0:
        sys.exit(f"cdp run failed:\n{run.stderr}")
    resolver_rate = None
    for line in (run.stdout + run.stderr).splitlines():
        m = re.match(r"resolver\s+\d+\s+\d+\s+\d+\s+(\d+)/s", line)
        if m:
            resolver_rate = float(m.group(1))
    out = subprocess.run(
        base + ["eval", "--truth", str(workload / "truth.csv"), "--json"],
        env=env, capture_output=True, text=True, check=True,
    )
    return json.loads(out.stdout), wall, resolver_rate


def main():
    here = Path(__file__).resolve().parent
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cdp", required=True, help="the cdp binary (a release build)")
    parser.add_argument("--sets", default=",".join(febrl.SETS + ("generated",)))
    parser.add_argument("--profiles", type=int, default=2000, help="people in the generated set")
    parser.add_argument("--work", default="/tmp/cdp-accuracy")
    parser.add_argument("--config", default=str(here / "cdp.toml"))
    parser.add_argument(
        "--threshold", type=float, default=None,
        help="Splink's clustering threshold; default: cdp's merge threshold from --config",
    )
    args = parser.parse_args()
    base = Path(args.config)
    threshold = args.threshold
    if threshold is None:
        threshold = tomllib.loads(base.read_text())["resolver"]["matching"]["merge_threshold"]

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    rows = []
    for name in args.sets.split(","):
        workload = work / name
        if name == "generated":
            records = generated.generate(args.cdp, workload, args.profiles, seed=42)
            n, identifiers = len(records), ("email", "phone")
        else:
            records = list(febrl.rows(febrl.load(name)))
            n, identifiers = febrl.write_workload(records, workload), ()
        data = work / f"{name}-data"
        builtin = run_cdp(args.cdp, write_config(base, work / "on.toml"), workload, data)
        off = write_config(base, work / "off.toml", enabled=False)
        run_cdp(args.cdp, off, workload, data)
        model = work / f"{name}-model.json"
        train_secs = train(args.cdp, off, data, model, sample=n)
        trained = run_cdp(
            args.cdp, write_config(base, work / "trained.toml", model_path=str(model)), workload, data
        )
        truth = {r["rec_id"]: r["person"] for r in records}
        clusters, splink_wall = splink_baseline.run(records, threshold, identifiers)
        rows.append((name, n, builtin, trained, train_secs, scores.pairwise(truth, clusters), splink_wall))
        print(f"{name}: done", file=sys.stderr)

    print(f"Merge threshold {threshold} for both. Pairwise precision (P), recall (R) and F1; records/s of the")
    print("whole run, start-up included (in brackets: cdp's resolver alone); Splink's time includes its training.\n")
    print("| set | records | matcher | P | R | F1 | seconds | records/s |")
    print("|---|---:|---|---:|---:|---:|---:|---:|")
    for name, n, builtin, trained, train_secs, s, splink_wall in rows:
        for label, (cdp, wall, resolver_rate), extra in [
            ("cdp, built-in model", builtin, ""),
            ("cdp, trained model", trained, f" (+{train_secs:.1f} training)"),
        ]:
            p = cdp["pairwise"]
            resolver = f" ({resolver_rate:,.0f})" if resolver_rate else ""
            print(
                f"| {name} | {n:,} | {label} | {p['precision']:.4f} | {p['recall']:.4f} | {p['f1']:.4f} "
                f"| {wall:.2f}{extra} | {n / wall:,.0f}{resolver} |"
            )
        print(
            f"| {name} | {n:,} | Splink | {s['precision']:.4f} | {s['recall']:.4f} | {s['f1']:.4f} "
            f"| {splink_wall:.2f} | {n / splink_wall:,.0f} |"
        )


if __name__ == "__main__":
    main()
