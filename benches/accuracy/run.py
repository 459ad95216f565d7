"""Side by side on public ground truth: cdp's streaming matcher and Splink's batch linkage over
the same records, scored by one rule. Prints a Markdown table (the one in the README).

    python run.py --cdp PATH/TO/cdp [--sets febrl1,febrl2,febrl3,febrl4] [--work DIR]

For each set, cdp runs as a user runs it: the records go onto the CRM raw topic, `cdp run
--until-drained` ingests, matches and resolves them one at a time (each record is compared with
its blocking candidates as it arrives), and `cdp eval` scores the profiles. Its rate is records
per second of the whole process (start-up included), and of the resolver alone as the pipeline
reports it. Splink's rate is records per second of its whole batch job.
"""

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import febrl
import scores
import splink_baseline


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
    parser.add_argument("--sets", default=",".join(febrl.SETS))
    parser.add_argument("--work", default="/tmp/cdp-accuracy")
    parser.add_argument("--config", default=str(here / "cdp.toml"))
    parser.add_argument(
        "--threshold", type=float, default=None,
        help="Splink's clustering threshold; default: cdp's merge threshold from --config",
    )
    args = parser.parse_args()
    threshold = args.threshold
    if threshold is None:
        text = Path(args.config).read_text()
        threshold = float(re.search(r"^merge_threshold\s*=\s*([\d.]+)", text, re.M).group(1))

    work = Path(args.work)
    rows = []
    for name in args.sets.split(","):
        records = list(febrl.rows(febrl.load(name)))
        workload = work / name
        n = febrl.write_workload(records, workload)
        cdp, cdp_wall, resolver_rate = run_cdp(args.cdp, Path(args.config), workload, work / f"{name}-data")
        truth = {r["rec_id"]: r["person"] for r in records}
        clusters, splink_wall = splink_baseline.run(records, threshold)
        s = scores.pairwise(truth, clusters)
        rows.append((name, n, cdp, cdp_wall, resolver_rate, s, splink_wall))
        print(f"{name}: done", file=sys.stderr)

    print(f"threshold {threshold}; pairwise scores; records/s over the whole run (cdp: resolver alone)\n")
    print("| set | records | cdp P | cdp R | cdp F1 | cdp B³ F1 | Splink P | Splink R | Splink F1 | cdp s | cdp rec/s | Splink s | Splink rec/s |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name, n, cdp, cdp_wall, resolver_rate, s, splink_wall in rows:
        p, c = cdp["pairwise"], cdp["clusters"]
        resolver = f" ({resolver_rate:,.0f})" if resolver_rate else ""
        print(
            f"| {name} | {n:,} | {p['precision']:.4f} | {p['recall']:.4f} | {p['f1']:.4f} | {c['bcubed_f1']:.4f} "
            f"| {s['precision']:.4f} | {s['recall']:.4f} | {s['f1']:.4f} "
            f"| {cdp_wall:.2f} | {n / cdp_wall:,.0f}{resolver} | {splink_wall:.2f} | {n / splink_wall:,.0f} |"
        )


if __name__ == "__main__":
    main()
