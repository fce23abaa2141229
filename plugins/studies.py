"""Built-in commands for comparing detectors: ablate, bench, suites, leaderboard, report,
audit-format and demo. The work is done by library modules (aligncore.ablation, .suites,
.leaderboard, .report, .audit, .demo); these commands parse options and print."""

from __future__ import annotations

import click

from aligncore import hookimpl


def _csv_list(value: str | None) -> list[str] | None:
    return [v.strip() for v in value.split(",") if v.strip()] if value else None


def _run_options(branches, fusion, preset, device, batch_size, checkpoints, options, fusion_options, perturb, store):
    from aligncore.cli import branch_options_with_checkpoints, parse_kv

    names = _csv_list(branches)
    bopts = branch_options_with_checkpoints(options, checkpoints, names)
    opts = {"branches": names, "fusion": fusion, "preset": preset, "device": device, "batch_size": batch_size,
            "branch_options": bopts or None, "fusion_options": parse_kv(fusion_options, "--fusion-option") or None,
            "perturb": perturb, "store": store}
    return {k: v for k, v in opts.items() if v is not None}


def _scoring_options(f):
    for opt in reversed([
        click.option("--branches", required=True, help="Comma-separated branch names, e.g. npr,qwen."),
        click.option("--fusion", default="or", show_default=True, help="Fusion rule."),
        click.option("--preset", help="Preset for every branch, e.g. tiny."),
        click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default=None),
        click.option("--batch-size", type=int),
        click.option("--checkpoint", "checkpoints", multiple=True, help="Trained weights: DIR (one branch) or BRANCH=DIR."),
        click.option("-o", "--option", "options", multiple=True, help="Branch option BRANCH.KEY=VALUE."),
        click.option("--fusion-option", "fusion_options", multiple=True, help="Fusion option KEY=VALUE."),
        click.option("--store", type=click.Path(dir_okay=False), help="Score store (default $ALIGNCORE_STORE)."),
        click.option("-q", "--quiet", is_flag=True, help="No progress bars."),
    ]):
        f = opt(f)
    return f


@hookimpl
def register_commands(cli):
    @cli.command("ablate")
    @click.argument("runs", nargs=-1, required=True, type=click.Path(exists=True, file_okay=False))
    @click.option("--fusions", default="or,and,max,weighted,learned", show_default=True, help="Comma-separated fusions to compare.")
    @click.option("--target-fpr", type=float, help="Calibrate every threshold on the calibration reals to this false-positive rate (e.g. 0.05).")
    @click.option("--cal-fraction", type=float, default=0.3, show_default=True, help="Share of images (by content hash) used for fitting and calibration.")
    @click.option("--seed", type=int, default=0, show_default=True, help="Seed of the calibration split.")
    @click.option("--out", type=click.Path(file_okay=False), help="Output folder (default RUN/ablation).")
    @click.option("--generators/--no-generators", default=True, help="Also print the per-generator rows.")
    def ablate_cmd(runs, fusions, target_fpr, cal_fraction, seed, out, generators):
        """Compare fusion rules (and each branch alone) on finished RUNS' stored scores; loads no model.

        Each RUN is one dataset. Learned fusions are fitted, and thresholds calibrated, on a calibration
        split disjoint from the evaluation images every number is measured on.
        """
        from aligncore.ablation import ablate, to_text

        res = ablate(runs, _csv_list(fusions) or [], target_fpr, cal_fraction, seed, out_dir=out)
        rows = res.rows if generators else [r for r in res.rows if r["scope"] == "dataset"]
        thr = f"thresholds calibrated to {target_fpr:.1%} FPR" if target_fpr is not None else "configured thresholds"
        click.echo(f"evaluation split: {1 - cal_fraction:.0%} of images by content hash; learned fusions fitted on the rest; {thr}")
        click.echo(to_text(rows))
        for k in ("csv", "md", "fusions"):
            click.echo(f"{k}: {res.files[k]}")
        for k, p in res.files.items():
            if k.startswith("state:"):
                click.echo(f"fitted state ({k[6:]}): {p}   (reuse: alignctl run ... --fusion-state {p})")

    @cli.command("suites")
    def suites_cmd():
        """List the benchmark suites (benchmarks/suites/*.yaml) and their datasets."""
        from aligncore.suites import list_suites, load_suite

        for p in list_suites():
            s = load_suite(p)
            click.echo(f"{s.name:<14} {s.title}")
            for d in s.datasets:
                click.echo(f"    {d.name:<24} {d.path}")

    @cli.command("bench")
    @click.argument("suite")
    @click.option("--root", type=click.Path(file_okay=False), help="Folder the suite's dataset paths are relative to "
                  "(default: the suite's root_env variable, then $ALIGNCORE_BENCH_ROOT).")
    @click.option("--perturb", help="Perturb every image before scoring, e.g. jpeg:75 (see alignctl run --help).")
    @click.option("--metric", default="accuracy", show_default=True, help="Leaderboard metric printed at the end.")
    @_scoring_options
    def bench_cmd(suite, root, perturb, metric, branches, fusion, preset, device, batch_size, checkpoints, options,
                  fusion_options, store, quiet):
        """Run a detector on every dataset of SUITE that is present; skip the others with one line each."""
        from aligncore.leaderboard import leaderboard, render
        from aligncore.store import ScoreStore
        from aligncore.suites import load_suite, resolve_root, run_suite

        s = load_suite(suite)
        root_path, origin = resolve_root(s, root)
        click.echo(f"suite {s.name}: {len(s.datasets)} dataset(s), root {root_path or '-'} ({origin})")
        opts = _run_options(branches, fusion, preset, device, batch_size, checkpoints, options, fusion_options, perturb, store)

        def event(o):
            if o.status == "skipped":
                click.echo(f"skip {o.name}: {o.detail}")
            else:
                m = o.metrics["overall"]
                click.echo(f"ran  {o.name}: run {o.run_id}, {m['n']} images, acc {m['accuracy']}, AUC {m['auc']}  ({o.detail})")

        outcomes = run_suite(s, root_path, opts, progress=not quiet, on_event=event)
        if any(o.status == "ran" for o in outcomes):
            with ScoreStore(store) as st:
                ds, rows = leaderboard(st, s.name, metric)
            click.echo(render(ds, rows, "table", metric, s.name))

    @cli.command("leaderboard")
    @click.option("--suite", help="Only rows recorded for this suite.")
    @click.option("--format", "fmt", type=click.Choice(["table", "md", "csv", "json", "html"]), default="table", show_default=True)
    @click.option("--metric", default="accuracy", show_default=True,
                  help="accuracy, real_accuracy, fake_accuracy, balanced_accuracy, ap, auc, tpr_at_1fpr, tpr_at_5fpr.")
    @click.option("--sort", help="Column to sort by (default: average).")
    @click.option("--ascending", is_flag=True, help="Sort ascending instead of descending.")
    @click.option("--store", type=click.Path(dir_okay=False), help="Score store (default $ALIGNCORE_STORE).")
    @click.option("--out", type=click.Path(dir_okay=False), help="Write to a file instead of the terminal.")
    def leaderboard_cmd(suite, fmt, metric, sort, ascending, store, out):
        """One row per (branches, checkpoints, fusion, perturbation); datasets as columns, their average, run ids."""
        from aligncore.leaderboard import leaderboard, render
        from aligncore.store import ScoreStore

        with ScoreStore(store) as st:
            ds, rows = leaderboard(st, suite, metric, sort, descending=not ascending)
        text = render(ds, rows, fmt, metric, suite)
        if not rows:
            click.echo("The leaderboard is empty" + (f" for suite {suite!r}" if suite else "") +
                       ": alignctl run or alignctl bench adds rows.", err=True)
        if out:
            with open(out, "w", encoding="utf-8") as f:
                f.write(text)
            click.echo(f"written to {out}")
        else:
            click.echo(text, nl=False)

    @cli.command("report")
    @click.argument("run_dir", type=click.Path(exists=True, file_okay=False))
    @click.option("--out", type=click.Path(dir_okay=False), help="HTML file (default RUN/report.html).")
    @click.option("--fusions", default="or,and,max,weighted,learned", show_default=True, help="Fusions in the ablation table.")
    @click.option("--target-fpr", type=float, help="Calibrate the ablation's thresholds to this FPR.")
    def report_cmd(run_dir, out, fusions, target_fpr):
        """Write one self-contained HTML page for a run: ROC, per-generator accuracy, histograms, confusion, ablation."""
        from aligncore.report import write_report

        path = write_report(run_dir, out, tuple(_csv_list(fusions) or ()), target_fpr)
        click.echo(f"report written to {path}")

    @cli.command("audit-format")
    @click.argument("data")
    @click.option("--reencode", default="jpeg:95", show_default=True,
                  help="Comma-separated re-encodings applied identically to both classes, e.g. jpeg:95,webp:90.")
    @_scoring_options
    def audit_cmd(data, reencode, branches, fusion, preset, device, batch_size, checkpoints, options, fusion_options,
                  store, quiet):
        """Format-bias audit: formats per class, and how much each branch's accuracy moves when both
        classes are re-encoded identically."""
        from aligncore.audit import AUDIT_METRICS, audit_format

        opts = _run_options(branches, fusion, preset, device, batch_size, checkpoints, options, fusion_options, None, store)
        res = audit_format(data, opts, _csv_list(reencode) or [], progress=not quiet,
                           log=None if quiet else (lambda m: click.echo(m, err=True)))
        for cls, counts in res.census.items():
            total = sum(counts.values()) or 1
            click.echo(f"{cls:<5} formats: " + ", ".join(f"{k} {v} ({v / total:.0%})" for k, v in counts.items()))
        head = f"{'detector':<22} {'condition':<12} " + " ".join(f"{k:>14}" for k in AUDIT_METRICS)
        click.echo(head)
        for r in res.rows:
            cells = []
            for k in AUDIT_METRICS:
                v, d = r[k], r[f"delta_{k}"]
                cells.append(f"{'n/a' if v is None else f'{v:.3f}':>6} ({'' if d is None else f'{d:+.3f}':>6})")
            click.echo(f"{r['detector']:<22} {r['condition']:<12} " + " ".join(f"{c:>14}" for c in cells))
        click.echo("(change against as-is in brackets; a large drop means the detector leaned on the file format)")
        click.echo("runs: " + ", ".join(f"{c}={rid}" for c, rid in res.runs.items()))

    @cli.command("demo")
    @click.option("--out", type=click.Path(file_okay=False), default="demo-out", show_default=True, help="Working folder.")
    @click.option("--images", type=int, default=None, help="Number of source photo crops (default: the plan's).")
    @click.option("--ae-weights", type=click.Path(file_okay=False, exists=True), default=None,
                  help="Folder with taef2_encoder.pth/taef2_decoder.pth: the real tiny FLUX.2 autoencoder for the pixel set "
                       "(default: $ALIGNCORE_SHARED/weights if set, else a random-weight tiny autoencoder).")
    def demo_cmd(out, images, ae_weights):
        """Offline end-to-end demonstration on bundled photos: build sets, train tiny branches, score,
        ablate fusions, print the leaderboard and write the HTML report (a few minutes on a CPU)."""
        from aligncore.demo import run_demo

        run_demo(out, n_images=images, echo=click.echo, ae_weights=ae_weights)
