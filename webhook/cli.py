"""The ``energetiscope`` command: the webhook's ``serve``, ``predict``, ``diff`` and ``regions``, ``certs`` and ``train``, assembled.

Each part lives with its package (``webhook/commands.py``, ``certs/cli.py``, ``trainer/cli.py``);
the trainer, which pulls scikit-learn and pandas, is imported only when ``train`` runs, so
``energetiscope --help`` and ``certs`` answer at once.
"""

from __future__ import annotations

import click

from certs.cli import certs
from webhook.commands import diff, predict, regions, serve


@click.group(context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
def main() -> None:
    """EnergetiScope: predict the power and energy of Kubernetes workloads from their specs."""


class _TrainerGroup(click.Group):
    """`energetiscope train`: the trainer package joins the CLI here, imported on first use."""

    def _group(self) -> click.Group:
        from trainer.cli import train

        return train

    def list_commands(self, ctx: click.Context) -> list[str]:
        return self._group().list_commands(ctx)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        return self._group().get_command(ctx, name)


main.add_command(serve)
main.add_command(certs)
main.add_command(predict)
main.add_command(diff)
main.add_command(regions)
main.add_command(_TrainerGroup(
    "train",
    help="Train the power model from measurements (Kepler and dcgm-exporter in Prometheus, or a measurement "
         "table): collect, labels, dataset, fit, evaluate, run.",
))

if __name__ == "__main__":
    main()
