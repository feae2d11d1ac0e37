"""Report: the markdown report, its plots and the JSON summary, also as Prefect artifacts."""

from __future__ import annotations

from prefect import task
from prefect.artifacts import create_link_artifact, create_markdown_artifact

from analysis.report import build_report
from swarmlab import failpoints
from tasks.common import RunHandle, artifact_key


@task(name="report", retries=1, retry_delay_seconds=5, timeout_seconds=600)
def report(run: RunHandle) -> str:
    record = run.record
    meta = record.meta()
    markdown, summary = build_report(record.path, meta, record.phases(), record.read_json("inventory.json", {}))
    failpoints.reach("during:report")
    path = record.path / "report.md"
    path.write_text(markdown)
    record.write_json("summary.json", summary)
    create_markdown_artifact(key=artifact_key(run, "report"), markdown=markdown,
                             description=f"report of run {run.run_id}")
    create_link_artifact(key=artifact_key(run, "report-file"), link=path.resolve().as_uri(),
                         link_text=str(path), description="report in the run record")
    return str(path)
