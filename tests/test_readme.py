"""The README documents every setting and names the test command that CI runs."""

from __future__ import annotations

from pathlib import Path

from metis_rag.devtools.settings_doc import env_settings

REPO = Path(__file__).resolve().parent.parent


def test_every_setting_is_in_the_readme() -> None:
    readme = (REPO / "README.md").read_text()
    missing = [env for env, _, _ in env_settings() if f"`{env}`" not in readme]
    assert not missing, f"settings missing from README.md: {missing}"


def test_ci_runs_the_readme_test_command() -> None:
    ci = [ln for ln in (REPO / ".ci" / "run").read_text().splitlines()
          if ln.strip() and not ln.startswith(("#", "set ", "cd "))]
    assert ci[-1] in (REPO / "README.md").read_text()
