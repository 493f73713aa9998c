"""Pictures of the real Label Studio UI for the README (`make screenshots`, after `make demo`).

    .venv/bin/python scripts/screenshots.py [--out docs]

Against the running demo (`make demo`: Label Studio on DEMO_LS_PORT, the backend on PORT), with
Debian's `chromium` driven by Playwright (no browser download): it adds a three-task NER project
(`demo/data/ner_en.jsonl`, connected to the same backend) and saves

    docs/task_with_score.png      a pre-annotated topic task in the labeling view, with its score
    docs/data_manager_score.png   the "Review queue" tab: unlabeled tasks, lowest prediction score first
    docs/ner_highlight.png        an NER task with the backend's entity spans highlighted
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from scripts import demo, stack  # noqa: E402

NER_PROJECT = demo.DemoProject("Demo: English entities (screenshots)", "ner_en.xml", "ner_en.jsonl",
                               "entity spans highlighted in the text")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking"]
TIMEOUT_MS = 90_000


def _review_view(client, project_id: int) -> int | None:
    for view in client.views.list(project=project_id):
        if (view.data or {}).get("title") == "Review queue":
            return int(view.id)
    return None


def _lowest_score_task(client, project_id: int) -> int:
    version = client.projects.get(id=project_id).model_version
    predictions = [p for p in client.predictions.list(project=project_id) if p.model_version == version]
    return min(predictions, key=lambda p: p.score).task


def capture(out: Path) -> int:
    from label_studio_sdk import LabelStudio
    from playwright.sync_api import sync_playwright

    config = demo.demo_config()
    if stack.status(config) != 0:
        print("error: the demo is not running: run `make demo` first", file=sys.stderr)
        return 1
    client = LabelStudio(base_url=config.ls_url, api_key=config.ls_token, timeout=120)
    topics = next(p.id for p in client.projects.list() if p.title == demo.PROJECTS[0].title)
    ner = demo.ensure_project(client, NER_PROJECT, config.backend_url)
    demo.wait_for_predictions(config.backend_url, demo.task_counts(client, [topics, ner]))
    view = _review_view(client, topics)
    out.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=shutil.which("chromium"), args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 860})
        page.set_default_timeout(TIMEOUT_MS)
        page.goto(f"{config.ls_url}/user/login/")
        page.fill('input[name="email"]', stack.DEFAULT_LS_USER)
        page.fill('input[name="password"]', stack.DEFAULT_LS_PASSWORD)
        page.click('button[type="submit"]')
        page.wait_for_url(lambda url: "/user/login" not in url)

        tab = f"?tab={view}" if view else ""
        page.goto(f"{config.ls_url}/projects/{topics}/data{tab}")
        page.wait_for_load_state("networkidle")
        time.sleep(3)  # the table renders after the data arrives
        page.screenshot(path=str(out / "data_manager_score.png"))

        task = _lowest_score_task(client, topics)
        page.goto(f"{config.ls_url}/projects/{topics}/data{tab}{'&' if tab else '?'}task={task}")
        page.wait_for_load_state("networkidle")
        time.sleep(4)
        page.screenshot(path=str(out / "task_with_score.png"))

        ner_task = min(t.id for t in client.tasks.list(project=ner))
        page.goto(f"{config.ls_url}/projects/{ner}/data?task={ner_task}")
        page.wait_for_load_state("networkidle")
        time.sleep(4)
        page.screenshot(path=str(out / "ner_highlight.png"))
        browser.close()
    for name in ("task_with_score", "data_manager_score", "ner_highlight"):
        print(f"wrote {(out / name).with_suffix('.png')}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scripts/screenshots.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "docs")
    return capture(parser.parse_args(argv).out)


if __name__ == "__main__":
    sys.exit(main())
