"""The index page of a reproduction: results/<profile>/index.html (and index.md) linking every figure,
table, executed notebook and run-card check, written atomically after each `cggm reproduce`."""
from __future__ import annotations

import html
import time
from pathlib import Path

import pandas as pd

from ..files import atomic_write_text
from ..runs.card import git_commit

PAPER_ITEMS = {"fig2": "Figure 2 (joint training dynamics, MOSI)", "fig3": "Figure 3 (CGGM dynamics, MOSI)",
               "fig4": "Figure 4 (t-SNE of classifier vs unimodal gradients)", "fig5": "Figure 5 (ρ and λ sensitivity)",
               "fig6": "Figure 6 (per-modality losses)", "fig7": "Figure 7 (balancing term B)",
               "table1": "Table 1 (datasets)", "table2": "Table 2 (UPMC-Food101)", "table3": "Table 3 (BraTS 2021)",
               "table4": "Table 4 (CMU-MOSI, IEMOCAP)", "table5": "Table 5 (IEMOCAP classifier accuracies)",
               "table6": "Table 6 (ablation)", "table7": "Table 7 (hyperparameters used)",
               "table8": "Table 8 (classifier memory)"}


def paper_item(stem: str) -> str:
    return next((v for k, v in PAPER_ITEMS.items() if stem.startswith(k + "_") or stem == k), "companion extra")


def write_index(results, profile, summary: dict, verification: pd.DataFrame) -> Path:
    root = Path(results) / profile.name
    figures = sorted((root / "figures").glob("*.png")) if (root / "figures").is_dir() else []
    tables = sorted((root / "tables").glob("*.csv")) if (root / "tables").is_dir() else []
    notebooks = sorted(p for p in (root / "notebooks").glob("*.ipynb") if not p.name.startswith(".")) \
        if (root / "notebooks").is_dir() else []
    counts = verification["status"].value_counts().to_dict() if len(verification) else {}
    standin = profile.allow_standin
    head = (f"Profile <b>{html.escape(profile.name)}</b>: {html.escape(profile.description)}. "
            f"Generated {time.strftime('%Y-%m-%d %H:%M')} at commit {html.escape(str(git_commit()))}; "
            f"{'render only (no training); ' if summary.get('render_only') else ''}"
            f"pipeline wall time {summary.get('wall_s', 0):.0f} s with {summary.get('jobs')} job(s).")
    parts = [f"<h1>CGGM companion: reproduction ({html.escape(profile.name)})</h1><p>{head}</p>"]
    if standin:
        parts.append("<p style='color:#b00'><b>Stand-in and synthetic data</b>: every number here checks the "
                     "pipeline, none is comparable with the paper.</p>")
    if summary.get("failed"):
        parts.append("<p style='color:#b00'><b>Failed steps</b>: " + ", ".join(map(html.escape, summary["failed"])) + "</p>")
    parts.append("<h2>Figures</h2>")
    for png in figures:
        rel = png.relative_to(root)
        pdf = rel.with_suffix(".pdf")
        parts.append(f"<figure style='display:inline-block;margin:8px'><a href='{rel}'><img src='{rel}' width='420'>"
                     f"</a><figcaption>{html.escape(png.stem)} — {html.escape(paper_item(png.stem))} "
                     f"(<a href='{rel}'>PNG</a> | <a href='{pdf}'>PDF</a>)</figcaption></figure>")
    parts.append("<h2>Tables</h2>")
    for csv in tables:
        rel = csv.relative_to(root)
        links = " | ".join(f"<a href='{rel.with_suffix(ext)}'>{name}</a>"
                           for ext, name in ((".csv", "CSV"), (".md", "Markdown"), (".tex", "LaTeX")))
        frame = pd.read_csv(csv, dtype=str, keep_default_na=False)
        parts.append(f"<h3>{html.escape(csv.stem)} — {html.escape(paper_item(csv.stem))}</h3><p>{links}</p>"
                     + frame.to_html(index=False, escape=True, border=0))
    parts.append("<h2>Executed notebooks</h2><ul>" + "".join(
        f"<li><a href='{nb.relative_to(root)}'>{html.escape(nb.name)}</a></li>" for nb in notebooks) + "</ul>")
    led = summary.get("ledger") or {}
    parts.append(f"<h2>Ledger</h2><p>{html.escape(str(led.get('path', '')))}: {led.get('known_cells', 0)} known paper "
                 f"cells, {len(led.get('problems', []))} problem(s) in the file, {led.get('flagged')} difference(s) "
                 "beyond tolerance in the last comparison (stand-in results are never compared).</p>")
    parts.append(f"<h2>Run cards</h2><p>{counts.get('ok', 0)} verified, {counts.get('problem', 0)} with problems, "
                 f"{counts.get('missing', 0)} not run (details: <a href='verification.json'>verification.json</a>); "
                 "each run folder holds config.json, metrics.json, trace.jsonl, run_card.json and its executed "
                 "10_train.ipynb.</p>")
    bad = verification[verification["status"] == "problem"] if len(verification) else verification
    if len(bad):
        parts.append(bad.to_html(index=False, escape=True, border=0))
    steps = pd.DataFrame(summary.get("steps", []))
    if len(steps):
        parts.append("<h2>Steps of the last invocation</h2>" + steps.to_html(index=False, escape=True, border=0))
    body = "\n".join(parts)
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>CGGM reproduction ({html.escape(profile.name)})"
            "</title><style>body{font-family:sans-serif;max-width:1200px;margin:auto}table{border-collapse:collapse;"
            "font-size:13px}td,th{padding:2px 8px;border-bottom:1px solid #ddd;text-align:left}</style></head>"
            f"<body>{body}</body></html>\n")
    atomic_write_text(root / "index.md", _markdown(root, profile, summary, figures, tables, notebooks, counts))
    return atomic_write_text(root / "index.html", page)


def _markdown(root, profile, summary, figures, tables, notebooks, counts) -> str:
    lines = [f"# CGGM companion: reproduction ({profile.name})", "", profile.description, ""]
    if profile.allow_standin:
        lines += ["**Stand-in and synthetic data**: every number checks the pipeline; none is comparable with the paper.", ""]
    lines += ["## Figures", ""] + [f"- [{p.stem}]({p.relative_to(root)}) ([PDF]({p.relative_to(root).with_suffix('.pdf')}))"
                                   f" — {paper_item(p.stem)}" for p in figures]
    lines += ["", "## Tables", ""] + [f"- {p.stem} — {paper_item(p.stem)}: [CSV]({p.relative_to(root)}), "
                                      f"[Markdown]({p.relative_to(root).with_suffix('.md')}), "
                                      f"[LaTeX]({p.relative_to(root).with_suffix('.tex')})" for p in tables]
    lines += ["", "## Executed notebooks", ""] + [f"- [{p.name}]({p.relative_to(root)})" for p in notebooks]
    lines += ["", f"Run cards: {counts.get('ok', 0)} verified, {counts.get('problem', 0)} with problems, "
                  f"{counts.get('missing', 0)} not run. Failed steps: {', '.join(summary.get('failed', [])) or 'none'}.", ""]
    return "\n".join(lines)


__all__ = ["PAPER_ITEMS", "paper_item", "write_index"]
