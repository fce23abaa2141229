"""``alignctl push CHECKPOINT --repo OWNER/NAME``: upload a detector to the Hugging Face Hub with a model card."""

from __future__ import annotations

import click


@click.command("push")
@click.argument("checkpoint", type=click.Path(exists=True, file_okay=False))
@click.option("--repo", "repo_id", required=True, help="Hub model repository OWNER/NAME (created when missing).")
@click.option("--private", is_flag=True, help="Create the repository as private.")
@click.option("--branch", help="The branch that wrote CHECKPOINT (default: what the checkpoint records).")
@click.option("--license", "license_", default=None, help="License of the weights for the card (e.g. apache-2.0; "
              "default: unknown).")
@click.option("--eval-run", type=click.Path(exists=True, file_okay=False),
              help="A run folder (alignctl run) whose metrics the card reports beside the training's.")
@click.option("--message", help="Commit message.")
@click.option("--dry-run", is_flag=True, help="Write the folder that would be uploaded (see --out) and print its "
              "files and card; upload nothing.")
@click.option("--out", type=click.Path(file_okay=False), help="Keep the folder that is uploaded here (default: a "
              "temporary folder, removed after the upload).")
def push_cmd(checkpoint, repo_id, private, branch, license_, eval_run, message, dry_run, out) -> None:
    """Upload CHECKPOINT (a trainer's --out, its weights folder, or a save_pretrained folder) to the Hub.

    The upload is the pretrained layout that `--checkpoint hf:OWNER/NAME` and
    `Detector.from_pretrained("OWNER/NAME")` read: the weights, aligncore.json and a generated model
    card (branch, fingerprint, training data and command, metrics, license, limits).
    """
    import shutil
    import tempfile
    from pathlib import Path

    from ..hub import is_hub_id, push_folder
    from ..pretrained import CARD_FILE, export_checkpoint

    if not is_hub_id(repo_id) or "/" not in repo_id:
        raise click.BadParameter(f"{repo_id!r} is not a repository name OWNER/NAME", param_hint="--repo")
    tmp = None
    if out is None:
        tmp = tempfile.mkdtemp(prefix="aligncore-push-")
        folder = Path(tmp) / "upload"
    else:
        folder = Path(out)
    try:
        export_checkpoint(checkpoint, folder, branch, repo_id=repo_id, license=license_, eval_run=eval_run)
        files = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
        click.echo(f"{len(files)} file(s) for {repo_id}: {', '.join(files)}")
        if dry_run:
            click.echo((folder / CARD_FILE).read_text(encoding="utf-8"))
            click.echo("dry run: nothing uploaded" + (f"; the folder is kept in {folder}" if out else ""))
            return
        url = push_folder(folder, repo_id, private=private, commit_message=message)
        click.echo(f"pushed to {repo_id}: {url}")
        click.echo(f"score with: alignctl run --branches ... --checkpoint hf:{repo_id} --data DIR")
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
