"""The suite's results table, laid out like the paper's: one row per method, one column per dataset.

The paper's rows (:mod:`lotus_pl.evaluation.reference`) come first, then the measured row. A depth
cell reads ``5.1/97.2`` (AbsRel % / δ1 %), a normal cell ``16.2/59.8/83.9`` (mean° / % < 11.25° /
% < 30°). A dataset the paper does not report shows ``—`` in its rows; a dataset whose evaluation
failed shows ``failed`` in the measured row.
"""

from __future__ import annotations

from typing import Any

from lotus_pl.evaluation.reference import (
    CELL_METRICS,
    CELL_TITLES,
    DATASET_TITLES,
    REFERENCE,
    UNCERTAINTY_METRICS,
    UNCERTAINTY_TITLES,
    cell_values,
    check_task,
)

MISSING = "—"
FAILED = "failed"
#: What the JSON table keeps of each dataset's ``test_results.json`` (all but the sample keys).
DETAIL_KEYS = ("metrics", "counts", "num_samples", "duplicate_keys", "world_size", "samples_per_rank", "ckpt_path",
               "test_manifest", "processing_resolution", "depth_range")


def format_cell(values: tuple[float | None, ...] | None) -> str:
    if values is None:
        return MISSING
    return "/".join(MISSING if v is None else f"{v:.1f}" for v in values)


def measured_cell(task: str, result: dict[str, Any] | None) -> str:
    """One dataset's measured cell from its ``test_results.json`` content (``None`` = it failed)."""
    if result is None or "metrics" not in result:
        return FAILED
    return format_cell(cell_values(task, result["metrics"]))


def markdown_table(task: str, datasets: list[str], measured: dict[str, dict[str, Any] | None], name: str) -> str:
    """The Markdown table: paper rows, then ``name``'s measured row."""
    check_task(task)
    titles = [DATASET_TITLES.get(d, d) for d in datasets]
    lines = [
        f"{task}: {CELL_TITLES[task]}",
        "",
        "| method | " + " | ".join(titles) + " |",
        "|---|" + "---|" * len(datasets),
    ]
    for method, cells in REFERENCE[task].items():
        lines.append(f"| {method} | " + " | ".join(format_cell(cells.get(d)) for d in datasets) + " |")
    lines.append(f"| **{name}** (measured) | " + " | ".join(measured_cell(task, measured.get(d)) for d in datasets) + " |")
    if any(has_uncertainty(task, measured.get(d)) for d in datasets):  # an ensemble: how good is its uncertainty
        lines += ["", f"uncertainty: {UNCERTAINTY_TITLES[task]} (lower AUSE, higher AURG is better)", "",
                  "| method | " + " | ".join(titles) + " |", "|---|" + "---|" * len(datasets),
                  f"| **{name}** (measured) | " + " | ".join(
                      format_cell(cell_values(task, measured[d]["metrics"], UNCERTAINTY_METRICS))
                      if has_uncertainty(task, measured.get(d)) else MISSING for d in datasets) + " |"]
    return "\n".join(lines) + "\n"


def has_uncertainty(task: str, result: dict[str, Any] | None) -> bool:
    """Whether a dataset's results hold an ensemble's AUSE / AURG."""
    return bool(result and "metrics" in result and UNCERTAINTY_METRICS[task][0][0] in result["metrics"])


def table_json(task: str, datasets: list[str], measured: dict[str, dict[str, Any] | None], name: str,
               errors: dict[str, str] | None = None) -> dict[str, Any]:
    """The same table as data, with each dataset's full measured metrics and counts."""
    check_task(task)
    rows: dict[str, dict[str, list[float | None] | None]] = {
        method: {d: (list(cells[d]) if d in cells else None) for d in datasets} for method, cells in REFERENCE[task].items()
    }
    rows[name] = {d: (list(cell_values(task, r["metrics"])) if r and "metrics" in r else None)
                  for d, r in ((d, measured.get(d)) for d in datasets)}
    uncertainty = {d: list(cell_values(task, measured[d]["metrics"], UNCERTAINTY_METRICS))
                   for d in datasets if has_uncertainty(task, measured.get(d))}
    details = {}
    for dataset in datasets:
        result = measured.get(dataset)
        if result is None:
            details[dataset] = {"error": (errors or {}).get(dataset, "no result")}
            continue
        details[dataset] = {k: result.get(k) for k in DETAIL_KEYS}
    return {
        "task": task,
        "cell": [name for name, _ in CELL_METRICS[task]],
        "cell_units": CELL_TITLES[task],
        "datasets": list(datasets),
        "measured_row": name,
        "rows": rows,
        **({"uncertainty_cell": [n for n, _ in UNCERTAINTY_METRICS[task]], "uncertainty": uncertainty} if uncertainty else {}),
        "measured": details,
    }
