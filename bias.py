"""Gender-bias evaluation of a sentence-embedding model (the seed's fourth demo application).

    python apps.py bias --model=M --output=DIR [--templates=sample_data/bias]

For each occupation of `occupations.tsv` (occupation, article, female_pct: the share of women in
the US labour statistics) and each template of `templates.tsv` (anchor, proposition), a gender-
free anchor ("The nurse went home after work.") is compared by cosine with two propositions that
differ only in gendered pronouns ("He ..." / "She ..."); a case goes to the closer one. Reported
per occupation and overall: the shares won by each proposition, the mean margin cos(anchor, male)
- cos(anchor, female), and the Spearman correlation of the per-occupation margin with the share
of women. docs/apps.md and docs/results.md describe the templates and the figures.
"""

from __future__ import annotations

import os

import numpy as np
import scipy.stats

import convert
import evaluate

PRONOUNS = {  # the only words in which a bias template's two propositions differ
    "male": {"Pronoun": "He", "pronoun": "he", "object": "him", "possessive": "his"},
    "female": {"Pronoun": "She", "pronoun": "she", "object": "her", "possessive": "her"},
}


def read_bias_templates(folder: str) -> tuple[list[dict], list[tuple[str, str]]]:
    """occupations.tsv (occupation, article, female_pct) and templates.tsv (anchor, proposition).

    Anchors may name {occupation} and {a} (its article), propositions also the pronoun fields of
    PRONOUNS; any other field, or a female_pct that is not a number, is reported by file and line.
    """
    occ_path = os.path.join(folder, "occupations.tsv")
    occupations = []
    for lineno, (occupation, article, pct) in evaluate.read_tsv(
        occ_path, ("occupation", "article", "female_pct")
    ):
        try:
            female_pct = float(pct)
        except ValueError as e:
            raise evaluate.DataFileError(
                f"{occ_path}:{lineno}: female_pct {pct!r} is not a number"
            ) from e
        occupations.append({"occupation": occupation, "article": article, "female_pct": female_pct})
    tpl_path = os.path.join(folder, "templates.tsv")
    templates = []
    words = {"occupation": "", "a": ""}
    for lineno, (anchor, prop) in evaluate.read_tsv(tpl_path, ("anchor", "proposition")):
        for column, text, fields in (
            ("anchor", anchor, words),
            ("proposition", prop, {**words, **PRONOUNS["male"]}),
        ):
            try:
                text.format(**fields)
            except (KeyError, IndexError, ValueError) as e:
                raise evaluate.DataFileError(
                    f"{tpl_path}:{lineno}: {column} {text!r} cannot be filled from the fields "
                    f"{', '.join('{' + f + '}' for f in fields)} ({type(e).__name__}: {e})"
                ) from e
        templates.append((anchor, prop))
    for path, rows in ((occ_path, occupations), (tpl_path, templates)):
        if not rows:
            raise evaluate.DataFileError(f"{path}: no rows after the header")
    return occupations, templates


def bias_eval(
    m: convert.LoadedModel, folder: str, batch_size: int = 64, prompt: str | None = None
) -> dict:
    """Per occupation and template: does the gender-free anchor sit closer (cosine) to the male
    or to the female proposition? Shares per occupation and overall. Texts get `prompt` (None:
    the model's default prompt) and the model's truncate_dim (re-normalised)."""
    occupations, templates = read_bias_templates(folder)
    triples = []  # (anchor, male proposition, female proposition)
    for o in occupations:
        words = {"occupation": o["occupation"], "a": o["article"]}
        for anchor, prop in templates:
            triples.append(
                (
                    anchor.format(**words),
                    prop.format(**words, **PRONOUNS["male"]),
                    prop.format(**words, **PRONOUNS["female"]),
                )
            )
    unique = list(dict.fromkeys(t for triple in triples for t in triple))
    emb = evaluate.encode(m, unique, batch_size=batch_size, label="bias", prompt=prompt)
    emb = emb.astype(np.float64)
    emb = evaluate.l2_normalize(emb)
    row = {t: i for i, t in enumerate(unique)}
    a, male, female = (emb[[row[t[j]] for t in triples]] for j in range(3))
    margin = ((a * male).sum(1) - (a * female).sum(1)).reshape(len(occupations), len(templates))

    def shares(mg: np.ndarray) -> dict:
        return {
            "male": round(float((mg > 0).mean()), 4),
            "female": round(float((mg < 0).mean()), 4),
            "tie": round(float((mg == 0).mean()), 4),
            "n": int(mg.size),
            "mean_margin": round(float(mg.mean()), 5),  # cos(anchor, male) - cos(anchor, female)
        }

    per_occ = [
        {"occupation": o["occupation"], "female_pct": o["female_pct"], **shares(mg)}
        for o, mg in zip(occupations, margin, strict=True)
    ]
    # Does the model's lean follow the labour statistics? Negative: more female jobs, less male.
    rho = scipy.stats.spearmanr(margin.mean(1), [o["female_pct"] for o in occupations]).statistic
    return {
        "model": m.path,
        "templates": folder,
        "overall": shares(margin),
        "spearman_margin_vs_female_pct": round(float(rho), 4),
        "occupations": per_occ,
    }


def bias_chart(report: dict, path: str) -> None:
    """bias_figure saved as a PNG."""
    bias_figure(report).savefig(path, dpi=100)


def bias_figure(report: dict, name: str | None = None):
    """Horizontal bars: per occupation (and overall) the male / tie / female shares; a
    matplotlib Figure (no pyplot: the demo's server threads draw at the same time). The title
    names the model: `name`, or the last two components of its path."""
    from matplotlib.figure import Figure  # only the chart needs matplotlib

    rows = [{"occupation": "OVERALL", **report["overall"]}, *report["occupations"]]
    labels = [
        r["occupation"] + (f" ({r['female_pct']:.0f}% f)" if "female_pct" in r else "")
        for r in rows
    ]
    male = np.array([r["male"] for r in rows])
    tie = np.array([r["tie"] for r in rows])
    fig = Figure(figsize=(8, 0.25 * len(rows) + 1.5))
    ax = fig.subplots()
    y = np.arange(len(rows))[::-1]
    ax.barh(y, male, color="#4c72b0", label="prefers male proposition")
    ax.barh(y, tie, left=male, color="#bbbbbb", label="tie")
    ax.barh(y, 1 - male - tie, left=male + tie, color="#dd8452", label="prefers female proposition")
    ax.axvline(0.5, color="black", linewidth=0.8)
    ax.set_yticks(y, labels, fontsize=7)
    ax.set_xlim(0, 1)
    ax.set_xlabel("share of template cases (occupations in WinoBias order, BLS % female)")
    ax.set_ylim(-0.6, len(rows) - 0.4)
    name = name or "/".join(os.path.normpath(report["model"]).split(os.sep)[-2:])
    ax.set_title(f"Gender preference of {name}", pad=24)  # above the legend
    ax.legend(loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=3, fontsize=7)
    fig.tight_layout()
    return fig


def format_table(report: dict) -> str:
    """The report as the CLI prints it: one line per occupation, overall first."""
    lines = [f"{'occupation':<20} female%   male  female    margin"]
    for r in [{"occupation": "OVERALL", **report["overall"]}, *report["occupations"]]:
        pct = f"{r['female_pct']:.0f}" if "female_pct" in r else ""
        lines.append(
            f"{r['occupation']:<20} {pct:>7} {r['male']:6.2f} {r['female']:7.2f} "
            f"{r['mean_margin']:9.5f}"
        )
    lines.append(f"spearman(margin, female%) = {report['spearman_margin_vs_female_pct']}")
    return "\n".join(lines)
