"""The Markdown report and the LaTeX table that `analyze` writes."""

from __future__ import annotations

import dataclasses
import math
import pathlib

import pandas as pd
import polars as pl

from analysis import bootstrap, power

METHODS = f"""\
How to read this report:

- An effect is a difference in the metric. A main effect compares one level of a factor with
  its reference level (the first listed), averaged over every level of the other factors. An
  interaction is a difference of differences: how much one component's effect changes when
  another is switched on.
- Shapley values split *full recipe minus baseline* among the components, averaging each
  one's contribution over every order of adding them. Leave-one-out (full recipe minus the
  recipe without the component) and add-one-in (baseline plus the component, minus the
  baseline) are the two extreme orders; they disagree when components interact. Banzhaf
  values (in `attribution.csv`) average over subsets instead of orders.
- Intervals are 95% studentized bootstrap (bootstrap-t) intervals over seeds. Whole seeds are
  resampled, so every contrast stays paired by seed. With fewer than
  {bootstrap.MIN_BOOTSTRAP_SEEDS} seeds they are t intervals, as the `interval` column says.
  Intervals are not adjusted for multiple comparisons.
- p-values come from the same bootstrap (from the t-test where the interval is a t
  interval) and are Holm-adjusted within each metric and family: main effects with
  interactions, Shapley values, Banzhaf values, leave-one-out, and add-one-in. An effect is
  *resolved*, that is, told apart from seed noise, when its adjusted p-value is below
  {power.ALPHA}.
- d_z is the mean per-seed contrast divided by its standard deviation. *Seeds needed* is the
  number of seeds at which a two-sided paired t-test at {power.ALPHA} (not Holm-adjusted)
  has {power.TARGET_POWER:.0%} power for an effect of the observed d_z (statsmodels
  TTestPower). It is an estimate: with few seeds, d_z is itself uncertain.
"""


@dataclasses.dataclass
class StudyFacts:
    """The facts about a study that the report prints besides its estimates."""

    name: str
    tracking_uri: str
    factors: dict[str, list[str]]
    seeds: list[int]
    trials: int
    finished: int
    failed: list[str]
    missing: list[str]
    resamples: int | None  # usable bootstrap resamples; None when every interval is a t interval

    @property
    def never_run(self) -> list[str]:
        """Return the trials of the design that have no run at all in the store."""
        recorded = {entry.split(" (", 1)[0] for entry in self.failed}
        return [trial for trial in self.missing if trial not in recorded]


def number(value: float | None, decimals: int = 3, signed: bool = True) -> str:
    """Format a number for a table; an em dash stands for a missing value."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "—"
    return f"{value:+.{decimals}f}" if signed else f"{value:.{decimals}f}"


def with_interval(value: float | None, low: float | None, high: float | None, decimals: int) -> str:
    if value is None:
        return "—"
    return f"{number(value, decimals)} [{number(low, decimals)}, {number(high, decimals)}]"


def interval_of(row: dict, prefix: str, decimals: int) -> str:
    """Format the columns `<prefix>`, `<prefix>_low` and `<prefix>_high` of a summary row."""
    return with_interval(row[prefix], row[f"{prefix}_low"], row[f"{prefix}_high"], decimals)


def decimals_for(table: pl.DataFrame) -> int:
    """Return enough decimals to show the narrowest interval half-width of `table` with two digits."""
    widths = (table["ci_high"] - table["ci_low"]).drop_nulls().drop_nans().to_numpy() / 2.0
    widths = widths[widths > 0]
    if not len(widths):
        return 3
    return int(min(6, max(3, 1 - math.floor(math.log10(widths.min())))))


def p_value(value: float | None) -> str:
    if value is None or not math.isfinite(value):
        return "—"
    return "<0.001" if value < 0.001 else f"{value:.3f}"


def markdown_report(
    facts: StudyFacts,
    summary: pl.DataFrame,
    attribution: pl.DataFrame,
    anova: pl.DataFrame,
    figures: dict[str, list[pathlib.Path]],
    folder: pathlib.Path,
    summary_metrics: list[str] | None = None,
) -> str:
    """Return the Markdown report of a study's attribution.

    `summary_metrics` (one or two per evaluation task) get a table of main
    effects at the top; every metric has its own section below.
    """
    parts = [
        f"# Attribution of study `{facts.name}`",
        "",
        _study_section(facts),
        "",
        *_summary_section(summary, summary_metrics or []),
        METHODS,
        _design_section(attribution),
    ]
    for metric in list(dict.fromkeys(attribution["metric"].to_list())):
        parts.append(
            _metric_section(
                metric,
                summary.filter(pl.col("metric") == metric),
                attribution.filter(pl.col("metric") == metric),
                anova.filter(pl.col("metric") == metric),
            )
        )
    parts.append(_figures_section(figures, folder))
    return "\n".join(parts).rstrip() + "\n"


def _summary_section(summary: pl.DataFrame, metrics: list[str]) -> list[str]:
    """Return a table of main effects, one row per component and one column per summary metric."""
    metrics = [metric for metric in metrics if metric in set(summary["metric"].to_list())]
    if not metrics:
        return []
    decimals = decimals_for(summary)
    rows = {(row["metric"], row["factor"], row["level"]): row for row in summary.iter_rows(named=True)}
    components = dict.fromkeys(summary.select("factor", "level", "reference").rows())
    lines = [
        "## Summary",
        "",
        "Main effects with 95% intervals; `*` marks an effect resolved from seed noise (Holm p < 0.05).",
        "",
        "| component | " + " | ".join(metrics) + " |",
        "|---|" + "---|" * len(metrics),
    ]
    for factor, level, reference in components:
        cells = []
        for metric in metrics:
            row = rows.get((metric, factor, level))
            if row is None:
                cells.append("—")
                continue
            mark = " *" if row["resolved"] else ""
            cells.append(with_interval(row["effect"], row["ci_low"], row["ci_high"], decimals) + mark)
        lines.append(f"| {factor}: {level} vs {reference} | " + " | ".join(cells) + " |")
    return lines + [""]


def _study_section(facts: StudyFacts) -> str:
    lines = [
        f"MLflow store: `{facts.tracking_uri}`. {facts.trials} trials of the design "
        f"({len(facts.seeds)} seeds: {', '.join(map(str, facts.seeds))}); {facts.finished} finished, "
        f"{len(facts.failed)} recorded as not finished, "
        f"{len(facts.never_run)} with no run in the store. " + _interval_sentence(facts.resamples),
        "",
        "| factor | levels (reference first) |",
        "|---|---|",
    ]
    lines += [f"| {name} | {', '.join(levels)} |" for name, levels in facts.factors.items()]
    if facts.failed:
        lines += ["", "Trials that did not finish (left out of every estimate):", ""]
        lines += [f"- {trial}" for trial in facts.failed]
    if facts.never_run:
        lines += ["", "Trials of the design with no run in the store:", ""]
        lines += [f"- {trial}" for trial in facts.never_run]
    return "\n".join(lines)


def _interval_sentence(resamples: int | None) -> str:
    if resamples:
        return f"Intervals: bootstrap-t with up to {resamples} usable resamples."
    minimum = bootstrap.MIN_BOOTSTRAP_SEEDS
    return f"Intervals: t intervals, because the study has fewer than {minimum} seeds with values."


def _design_section(attribution: pl.DataFrame) -> str:
    modelled = attribution.filter(pl.col("basis") == "model")
    declined = attribution.filter(pl.col("basis") == "declined")
    if modelled.is_empty() and declined.is_empty():
        return "Design: every cell has finished trials, so every estimate comes straight from the data.\n"
    lines = ["Design: some cells have no finished trial."]
    if not modelled.is_empty():
        lines.append(
            f"{modelled.height} estimates predict those cells from the lower-order terms; they hold "
            "only if the terms named in their `aliases` column are negligible."
        )
    if not declined.is_empty():
        lines.append(f"{declined.height} estimates are declined; each metric's section gives the reasons.")
    return " ".join(lines) + "\n"


def _metric_section(
    metric: str, summary: pl.DataFrame, attribution: pl.DataFrame, anova: pl.DataFrame
) -> str:
    decimals = decimals_for(attribution)
    lines = [f"## {metric}", ""]
    total = attribution.filter(pl.col("kind") == "total")
    if total.height and total["effect"][0] is not None:
        row = total.row(0, named=True)
        gain = with_interval(row["effect"], row["ci_low"], row["ci_high"], decimals)
        lines += [
            f"Full recipe minus baseline: {gain} "
            f"(Holm p {p_value(row['p_holm'])}, {row['seeds']} seeds, {row['interval']}).",
            "",
        ]

    lines += _component_table(summary, decimals)
    lines += ["", *_verdicts(summary, decimals)]
    lines += ["", *_anova_table(anova)]

    declined = attribution.filter(pl.col("basis") == "declined")
    lines += _listed("Declined:", declined)
    noted = pl.col("note").is_not_null() & (pl.col("note") != "")
    lines += _listed("Notes:", attribution.filter((pl.col("basis") != "declined") & noted))
    return "\n".join(lines) + "\n"


def _listed(title: str, rows: pl.DataFrame) -> list[str]:
    """Return a Markdown list of the rows' notes under `title`, or nothing for no rows."""
    if rows.is_empty():
        return []
    items = [
        f"- {row['kind']} {row['factor']} ({row['level']}): {row['note']}"
        for row in rows.iter_rows(named=True)
    ]
    return ["", title, "", *items]


COMPONENT_COLUMNS = [
    "component",
    "main effect [95% CI]",
    "Holm p",
    "resolved",
    "d_z",
    "seeds needed",
    "Shapley",
    "leave one out",
    "add one in",
    "strongest interaction",
]


def _component_table(summary: pl.DataFrame, decimals: int) -> list[str]:
    lines = ["| " + " | ".join(COMPONENT_COLUMNS) + " |", "|" + "---|" * len(COMPONENT_COLUMNS)]
    for row in summary.iter_rows(named=True):
        interaction = "—"
        if row["interaction"]:
            mark = " (resolved)" if row["interaction_resolved"] else ""
            effect = with_interval(
                row["interaction_effect"], row["interaction_low"], row["interaction_high"], decimals
            )
            interaction = f"{row['interaction']} ({row['interaction_levels']}) {effect}{mark}"
        aliases = f" (aliased with {row['aliases']})" if row["aliases"] else ""
        cells = [
            f"{row['factor']}: {row['level']} vs {row['reference']}{aliases}",
            with_interval(row["effect"], row["ci_low"], row["ci_high"], decimals),
            p_value(row["p_holm"]),
            _yes_no(row["resolved"]),
            number(row["d_z"], 2),
            _seeds_needed(row),
            interval_of(row, "shapley", decimals),
            interval_of(row, "leave_one_out", decimals),
            interval_of(row, "add_one_in", decimals),
            interaction,
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _yes_no(value: bool | None) -> str:
    if value is None:
        return "—"
    return "yes" if value else "no"


def _seeds_needed(row: dict) -> str:
    if row["seeds_needed"] is not None:
        return str(row["seeds_needed"])
    if row["d_z"] is not None and math.isfinite(row["d_z"]):
        return f"> {power.MAX_SEEDS:,}"
    return "—"


def _verdicts(summary: pl.DataFrame, decimals: int) -> list[str]:
    """Return one sentence per component: its effect, whether it is resolved, and the seeds it needs."""
    sentences = []
    for row in summary.iter_rows(named=True):
        name = f"{row['factor']} = {row['level']}"
        if row["effect"] is None:
            sentences.append(f"- {name}: not estimated (see Declined).")
            continue
        effect = with_interval(row["effect"], row["ci_low"], row["ci_high"], decimals)
        if row["resolved"]:
            verdict = f"resolved from seed noise with {row['seeds']} seeds"
        elif row["seeds_needed"] is not None:
            verdict = (
                f"not told apart from seed noise with {row['seeds']} seeds; "
                f"about {row['seeds_needed']} seeds would resolve an effect of this size"
            )
        else:
            verdict = f"not told apart from seed noise with {row['seeds']} seeds"
        sentences.append(f"- {name}: {effect}, {verdict}.")
    return sentences


def _anova_table(anova: pl.DataFrame) -> list[str]:
    if anova.is_empty():
        return ["Analysis of variance: not available for this metric."]
    lines = [
        "Share of variance (type II sums of squares, seeds as blocks):",
        "",
        "| term | df | share | F | p |",
        "|---|---|---|---|---|",
    ]
    for row in anova.iter_rows(named=True):
        lines.append(
            f"| {row['term']} | {row['df']:.0f} | {number(row['share'], 3, signed=False)} "
            f"| {number(row['f_value'], 2, signed=False)} | {p_value(row['p_value'])} |"
        )
    return lines


def _figures_section(figures: dict[str, list[pathlib.Path]], folder: pathlib.Path) -> str:
    lines = ["## Figures", ""]
    for title, paths in figures.items():
        png = [path for path in paths if path.suffix == ".png"]
        for path in png:
            relative = path.relative_to(folder)
            lines += [
                f"![{title}]({relative.as_posix()})",
                f"*{title}* (also `{relative.with_suffix('.svg').as_posix()}`)",
                "",
            ]
    return "\n".join(lines)


def latex_table(summary: pl.DataFrame, study: str) -> str:
    """Return a booktabs table of each component's main effect and Shapley value per metric.

    The document needs `\\usepackage{booktabs}`.
    """
    rows = []
    for metric in list(dict.fromkeys(summary["metric"].to_list())):
        part = summary.filter(pl.col("metric") == metric)
        decimals = decimals_for(part) if part.height else 3
        for row in part.iter_rows(named=True):
            rows.append(
                {
                    "Metric": metric,
                    "Component": f"{row['factor']}: {row['level']} vs {row['reference']}",
                    "Effect [95% CI]": with_interval(row["effect"], row["ci_low"], row["ci_high"], decimals),
                    "Holm p": p_value(row["p_holm"]),
                    "d_z": number(row["d_z"], 2),
                    "Shapley [95% CI]": interval_of(row, "shapley", decimals),
                }
            )
    frame = pd.DataFrame(
        rows, columns=["Metric", "Component", "Effect [95% CI]", "Holm p", "d_z", "Shapley [95% CI]"]
    )
    frame = frame.replace("—", "--")
    styler = frame.style.hide(axis="index").format(escape="latex").format_index(escape="latex", axis=1)
    return styler.to_latex(
        hrules=True,
        column_format="llllrl",
        position_float="centering",
        caption=(
            f"Effects of each component in study {escape_latex(study)}, "
            "with 95\\% intervals by bootstrap over seeds."
        ),
        label=f"tab:effects-{study}",
    )


_LATEX_SPECIAL = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
}


def escape_latex(text: str) -> str:
    """Escape the characters that LaTeX treats as commands in running text."""
    return "".join(_LATEX_SPECIAL.get(character, character) for character in text)
