"""`ssmd shard rates|plan|validate --plan|apply|rollback` and `ssmd day roll`, as operators use them.

Every test works on a copy of kalshi-dev in a temporary git repository (the repository's own
files are never touched). Redis and NATS are real servers. The Pulumi CLI is not installed
on these machines, so the Kubernetes path is exercised up to the Automation API boundary:
`pulumi.automation.select_stack` is replaced by a recorder, and the tests assert the stack,
the program (the project directory with `Pulumi.yaml` and `__main__.py`) and the arguments
(`up(message=<env file commit>, refresh=True)`, `preview(diff=True)` of the planned file)
that ssmd would hand to Pulumi. The "no Pulumi CLI" messages are tested as they are.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import shutil
import subprocess
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import nats
import pytest
import redis
import typer
import yaml
from cli_runner import Ssmd, in_process

from ssmd_infra.adapters.jetstream import reconcile_streams
from ssmd_infra.core import redis_keys
from ssmd_infra.core.environment import load_environment
from ssmd_infra.core.nkey_seeds import generate_user_seed
from ssmd_infra.core.streams import stream_specs
from ssmd_infra.core.subjects import internal_subject
from ssmd_infra.deploy import kubernetes

REPO = Path(__file__).resolve().parents[2]
ENV_REL = "exchanges/environments/kalshi-dev.yaml"

RATES = {
    "env": "kalshi-dev",
    "shards": {
        "tier1a": {"BTCUSD": 5000.0},
        "tier1": {
            "ETHUSD": 4000.0,
            "SOLUSD": 3000.0,
            "AVAXUSD": 2500.0,
            "MATICUSD": 500.0,
            "INXD-25-B4000": 1500.0,
            "INXD-25-B4100": 1500.0,
            "NASDAQ100-25-B20000": 1000.0,
        },
        "tier2": {"FED-25DEC-T4.25": 10.0},
    },
}


def git(repo: Path, *args: str) -> str:
    return subprocess.run(
        ["git", *args], cwd=repo, check=True, capture_output=True, text=True
    ).stdout.strip()


@pytest.fixture
def repo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A git repository holding a Pulumi project and kalshi-dev, with a README committed
    before the environment file (a revision where the file does not exist)."""
    root = tmp_path / "ops"
    root.mkdir()
    git(root, "init", "-q", "-b", "main")
    git(root, "config", "user.email", "ops@example.com")
    git(root, "config", "user.name", "ops")
    (root / "README").write_text("ops repo\n")
    git(root, "add", "README")
    git(root, "commit", "-q", "-m", "readme")
    env = root / ENV_REL
    env.parent.mkdir(parents=True)
    shutil.copy(REPO / ENV_REL, env)
    shutil.copy(REPO / "Pulumi.yaml", root / "Pulumi.yaml")
    shutil.copy(REPO / "__main__.py", root / "__main__.py")
    (root / "Pulumi.dev.yaml").write_text(
        "config:\n  ssmd:environment: kalshi-dev\n  ssmd:natsAdminUrl: nats://127.0.0.1:1\n"
    )
    git(root, "add", ".")
    git(root, "commit", "-q", "-m", "kalshi-dev")
    (root / "rates.yaml").write_text(yaml.safe_dump(RATES))
    monkeypatch.chdir(root)
    monkeypatch.delenv("SSMD_REDIS_URL", raising=False)
    monkeypatch.delenv("SSMD_ENV_DIR", raising=False)
    return root


@pytest.fixture
def ssmd(capsys: pytest.CaptureFixture[str]) -> Iterator[Ssmd]:
    """Run `ssmd ARGS...` in-process, as the console script does."""

    yield in_process(capsys)


@pytest.fixture
def no_pulumi(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(kubernetes, "pulumi_cli", lambda: None)


class Recorder:
    """Stands in for `pulumi.automation.select_stack` and the stack it returns."""

    def __init__(self, env_file: Path) -> None:
        self.env_file = env_file
        self.selected: list[dict[str, Any]] = []
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.seen: list[str] = []  # the environment text the program would read at each call
        self.history_rows: list[Any] = []
        self.up_error: Exception | None = None  # what the Automation API raises at `up`
        # the stack's state as `pulumi stack export` gives it (what `unprotect` edits)
        self.state: list[dict[str, Any]] = [
            {"urn": f"urn:pulumi:dev::ssmd::{t}::{n}", "protect": True}
            for t, n in [
                (
                    "ssmd:index:Environment$ssmd:index:Shard$pulumi-python:dynamic/ssmd:NatsStream",
                    "tier1-stream",
                ),
                (
                    "ssmd:index:Environment$ssmd:index:Shard$pulumi-python:dynamic/ssmd:NatsStream",
                    "tier1b-stream",
                ),
                (
                    "ssmd:index:Environment$ssmd:index:Shard$kubernetes:core/v1:PersistentVolumeClaim",
                    "tier1b-archive",
                ),
            ]
        ]

    def export_stack(self) -> Any:
        self.calls.append(("export_stack", {}))
        return SimpleNamespace(deployment={"resources": self.state})

    def import_stack(self, state: Any) -> None:
        self.calls.append(("import_stack", {}))
        self.state = state.deployment["resources"]

    def select_stack(self, **kwargs: Any) -> Recorder:
        self.selected.append(kwargs)
        return self

    def preview(self, **kwargs: Any) -> Any:
        self.calls.append(("preview", kwargs))
        env_dir = self.selected[-1]["opts"].env_vars["SSMD_ENV_DIR"]
        self.seen.append((Path(env_dir) / "kalshi-dev.yaml").read_text())
        from pulumi.automation import OpType

        return SimpleNamespace(change_summary={OpType.CREATE: 7, OpType.UPDATE: 1, OpType.SAME: 20})

    def up(self, **kwargs: Any) -> Any:
        self.calls.append(("up", kwargs))
        if self.up_error is not None:
            raise self.up_error
        self.seen.append(self.env_file.read_text())
        summary = SimpleNamespace(result="succeeded", version=42, resource_changes={"create": 7})
        return SimpleNamespace(summary=summary)

    def history(self, **kwargs: Any) -> list[Any]:
        self.calls.append(("history", kwargs))
        return self.history_rows


@pytest.fixture
def pulumi(monkeypatch: pytest.MonkeyPatch, repo: Path) -> Recorder:
    recorder = Recorder(repo / ENV_REL)
    monkeypatch.setattr(kubernetes, "pulumi_cli", lambda: "/usr/local/bin/pulumi")
    monkeypatch.setattr("pulumi.automation.select_stack", recorder.select_stack)
    return recorder


def plan_id(out: str) -> str:
    for line in out.splitlines():
        if line.startswith("saved: .ssmd/plans/"):
            return Path(line.split()[-1]).stem
    raise AssertionError(f"no plan saved in:\n{out}")


def make_plan(ssmd: Ssmd, *extra: str) -> str:
    result = ssmd(
        "shard", "plan", "kalshi-dev", "--strategy", "split-tier1", "--rates", "rates.yaml", *extra
    )
    assert result.code == 0, result.err
    return plan_id(result.out)


# ----------------------------------------------------------------------------- plan


def test_plan_shows_changes_estimates_moves_and_saves_it(
    ssmd: Ssmd, repo: Path, no_pulumi: None
) -> None:
    result = ssmd(
        "shard", "plan", "kalshi-dev", "--strategy", "split-tier1", "--rates", "rates.yaml"
    )
    assert result.code == 0, result.err
    out = result.out
    assert "Proposed changes:\n  + shard tier1b: selector {tier: 1, symbol: [" in out
    assert "Estimated msg/s of every resulting shard" in out
    for shard in ("tier1a", "tier1", "tier1b", "tier2"):
        assert f"\n  {shard} " in out
    assert "Symbols moved: " in out
    assert "Balance: heaviest" in out and "LPT guarantees" in out
    # without the Pulumi CLI: said so, and ssmd's own desired-state diff instead
    assert (
        "pulumi preview not run: the Pulumi CLI is not on PATH. ssmd's own desired-state diff:"
        in out
    )
    assert "+ shard tier1b:" in out and "connector Deployment, HPA" in out
    assert "+ stream ssmd-internal-tier1b" in out
    assert "~ stream ssmd-client: sources" in out
    stored = yaml.safe_load((repo / ".ssmd" / "plans" / f"{plan_id(out)}.yaml").read_text())
    assert stored["env_sha256"] == hashlib.sha256((repo / ENV_REL).read_bytes()).hexdigest()
    assert stored["strategy"] == "split-tier1:2"
    assert stored["symbols_moved"] == len(stored["moves"]) > 0
    assert (repo / ENV_REL).read_text() == (REPO / ENV_REL).read_text()  # plan writes nothing


def test_plan_json_and_same_input_same_plan(ssmd: Ssmd, repo: Path, no_pulumi: None) -> None:
    args = ("shard", "plan", "kalshi-dev", "--strategy", "split-tier1:3", "--rates", "rates.yaml")
    first = json.loads(ssmd(*args, "--json").out)
    second = json.loads(ssmd(*args, "--json").out)
    assert first["id"] == second["id"]
    assert first["changes"] == second["changes"]
    assert [c["op"] for c in first["changes"]] == ["add_shard", "add_shard"]
    assert {s["shard"] for s in first["shards"]} == {"tier1a", "tier1", "tier1b", "tier1c", "tier2"}
    assert first["preview"] == {"ran": False, "reason": "the Pulumi CLI is not on PATH"}
    assert {c["check"] for c in first["checks"]} >= {"cpu budget", "nats mappings"}
    assert first["desired_diff"]["symbols_moved"] == first["symbols_moved"]


def test_plan_previews_the_planned_file_through_the_automation_api(
    ssmd: Ssmd, repo: Path, pulumi: Recorder
) -> None:
    result = ssmd(
        "shard", "plan", "kalshi-dev", "--strategy", "split-tier1", "--rates", "rates.yaml"
    )
    assert result.code == 0, result.err
    assert "pulumi preview (stack dev): create 7, same 20, update 1" in result.out
    (selected,) = pulumi.selected
    assert selected["stack_name"] == "dev"
    assert selected["work_dir"] == str(repo)  # the project's own program: Pulumi.yaml → __main__.py
    assert (Path(selected["work_dir"]) / "__main__.py").is_file()
    assert pulumi.calls == [
        ("preview", {"diff": True, "on_output": pulumi.calls[0][1]["on_output"]})
    ]
    # the program read the planned file, not the one on disk (which is untouched)
    assert "tier1b:" in pulumi.seen[0]
    assert "tier1b" not in (repo / ENV_REL).read_text()


def test_validate_plan_checks_the_planned_file(ssmd: Ssmd, repo: Path, no_pulumi: None) -> None:
    pid = make_plan(ssmd)
    ok = ssmd("shard", "validate", "kalshi-dev", "--plan", pid)
    assert ok.code == 0, ok.err
    assert f"(as planned by {pid}): valid — 20 symbols in 4 shards" in ok.out
    over = ssmd("shard", "validate", "kalshi-dev", "--plan", pid, "--cpu-budget", "3")
    assert over.code == 1
    assert "cpu budget: cpu requested at full scale: 5.00, over the budget of 3.00" in over.err


# ----------------------------------------------------------------------------- refusals


def test_a_plan_is_refused_once_the_env_file_changed(
    ssmd: Ssmd, repo: Path, no_pulumi: None
) -> None:
    pid = make_plan(ssmd)
    env = repo / ENV_REL
    env.write_text(env.read_text().replace("replicas: 1\n", "replicas: 3\n"))
    git(repo, "commit", "-q", "-am", "tier2 gets 3 replicas")
    before = env.read_text()
    for args in (
        ("shard", "apply", "kalshi-dev", "--plan", pid, "--target", "local"),
        ("shard", "validate", "kalshi-dev", "--plan", pid),
    ):
        result = ssmd(*args)
        assert result.code == 1
        assert f"plan {pid} was computed from another version of" in result.err
        assert (
            "Make a new plan: `ssmd shard plan kalshi-dev --strategy split-tier1:2`" in result.err
        )
    assert env.read_text() == before


def test_apply_refuses_uncommitted_changes_unless_allowed(
    ssmd: Ssmd, repo: Path, no_pulumi: None
) -> None:
    env = repo / ENV_REL
    env.write_text(env.read_text() + "# reviewed tomorrow\n")
    pid = make_plan(ssmd)  # computed from the dirty file, so its hash matches
    dirty = env.read_text()
    refused = ssmd("shard", "apply", "kalshi-dev", "--plan", pid, "--target", "local")
    assert refused.code == 1
    assert f"{ENV_REL} has uncommitted changes" in refused.err
    assert "or pass --allow-dirty" in refused.err
    allowed = ssmd(
        "shard", "apply", "kalshi-dev", "--plan", pid, "--target", "local", "--allow-dirty"
    )
    # past the git check; the next refusal is that no local pipeline runs here
    assert allowed.code == 1
    assert "no local pipeline is running for kalshi-dev" in allowed.err
    assert "ssmd local up kalshi-dev" in allowed.err
    assert env.read_text() == dirty  # nothing written by either refusal


def test_apply_on_kubernetes_without_the_pulumi_cli_changes_nothing(
    ssmd: Ssmd, repo: Path, no_pulumi: None
) -> None:
    pid = make_plan(ssmd)
    before = (repo / ENV_REL).read_text()
    result = ssmd("shard", "apply", "kalshi-dev", "--plan", pid)
    assert result.code == 1
    assert "runs `pulumi up` on stack dev through the Automation API" in result.err
    assert "needs the Pulumi CLI on PATH" in result.err and "nothing was changed" in result.err
    assert (repo / ENV_REL).read_text() == before
    assert git(repo, "log", "-1", "--format=%s") == "kalshi-dev"


def test_unknown_plan_id(ssmd: Ssmd, repo: Path, no_pulumi: None) -> None:
    pid = make_plan(ssmd)
    result = ssmd("shard", "apply", "kalshi-dev", "--plan", "kalshi-dev-nope", "--target", "local")
    assert result.code == 1
    assert f"no plan 'kalshi-dev-nope' in .ssmd/plans/ (plans: {pid})" in result.err


@pytest.mark.parametrize(
    ("strategy", "message"),
    [
        ("shuffle", "unknown strategy 'shuffle'; use split-<shard>[:N]"),
        (
            "split-tier9",
            "cannot split 'tier9': no such shard in kalshi-dev (shards: tier1a, tier1, tier2)",
        ),
        ("split-tier1:1", "N must be at least 2"),
        ("split-tier1:8", "shard tier1 has 7 symbol(s), so it can be split into at most 7"),
    ],
)
def test_bad_strategies(ssmd: Ssmd, repo: Path, strategy: str, message: str) -> None:
    result = ssmd("shard", "plan", "kalshi-dev", "--strategy", strategy, "--rates", "rates.yaml")
    assert result.code == 1
    assert message in result.err


def test_no_rates_available_says_how_to_get_them(ssmd: Ssmd, repo: Path, redis_url: str) -> None:
    nowhere = ssmd("shard", "plan", "kalshi-dev", "--strategy", "rebalance")
    assert nowhere.code == 1
    assert "no rates available for kalshi-dev: no Redis to read them from" in nowhere.err
    assert "`ssmd shard rates kalshi-dev --save FILE` as `--rates FILE`" in nowhere.err
    empty = ssmd("shard", "plan", "kalshi-dev", "--strategy", "rebalance", "--redis-url", redis_url)
    assert empty.code == 1
    assert "holds no per-symbol rates (`kalshi-dev:shard:<shard>:symbol_rates`" in empty.err
    missing = ssmd("shard", "plan", "kalshi-dev", "--strategy", "rebalance", "--rates", "nope.yaml")
    assert missing.code == 1
    assert "rates file nope.yaml does not exist; write one with `ssmd shard rates" in missing.err


def test_rates_from_redis_saved_and_planned_from(
    ssmd: Ssmd, repo: Path, redis_url: str, no_pulumi: None
) -> None:
    client = redis.Redis.from_url(redis_url)
    keys = []
    try:
        for shard, rates in RATES["shards"].items():  # type: ignore[attr-defined]
            key = redis_keys.symbol_rates_key("kalshi-dev", shard)
            keys.append(key)
            client.hset(key, mapping=rates)
        shown = ssmd("shard", "rates", "kalshi-dev", "--redis-url", redis_url, "--save", "r.yaml")
        assert shown.code == 0, shown.err
        assert "tier1   " in shown.out and "ETHUSD 4,000.0" in shown.out
        saved = yaml.safe_load((repo / "r.yaml").read_text())
        assert saved["shards"]["tier1"]["ETHUSD"] == 4000.0
        from_file = ssmd(
            "shard", "plan", "kalshi-dev", "--strategy", "split-tier1", "--rates", "r.yaml"
        )
        from_redis = ssmd(
            "shard", "plan", "kalshi-dev", "--strategy", "split-tier1", "--redis-url", redis_url
        )
        assert plan_id(from_file.out) == plan_id(from_redis.out)  # same figures, same plan
    finally:
        client.delete(*keys)
        client.close()


# ----------------------------------------------------------------------------- apply on Kubernetes


def test_apply_on_kubernetes_runs_pulumi_up_with_the_env_commit(
    ssmd: Ssmd, repo: Path, pulumi: Recorder
) -> None:
    pid = make_plan(ssmd)
    planned = yaml.safe_load((repo / ".ssmd" / "plans" / f"{pid}.yaml").read_text())
    result = ssmd("shard", "apply", "kalshi-dev", "--plan", pid, "--no-verify")
    assert result.code == 0, result.err
    # the file is the plan's, committed on its own
    assert (repo / ENV_REL).read_text() == planned["environment_after"]
    assert git(repo, "log", "-1", "--format=%s").startswith(
        f"ssmd shard apply kalshi-dev: plan {pid}"
    )
    assert git(repo, "status", "--porcelain", "--", ENV_REL) == ""
    commit = git(repo, "log", "-1", "--format=%H", "--", ENV_REL)
    # the Automation API call: this project's program, the stack that names kalshi-dev
    up_select = pulumi.selected[-1]
    assert up_select == {"stack_name": "dev", "work_dir": str(repo), "opts": None}
    name, kwargs = pulumi.calls[-1]
    assert name == "up"
    assert kwargs["refresh"] is True
    assert kwargs["message"] == (
        f"ssmd shard apply kalshi-dev (plan {pid}): {ENV_REL}@{commit[:12]}"
    )
    assert pulumi.seen[-1] == planned["environment_after"]  # up deploys the written file
    assert "pulumi up: succeeded (update 42)" in result.out
    assert kubernetes.commit_of_message(kwargs["message"]) == commit[:12]


@pytest.mark.parametrize(
    ("error", "said"),
    [
        (
            "ConcurrentUpdateError",
            "pulumi up on stack dev did not start: another update of the stack is running. "
            "Wait for it, or if it died, `pulumi cancel -s dev`",
        ),
        (
            "StackNotFoundError",
            "pulumi up: stack dev does not exist in the current Pulumi backend",
        ),
        ("CommandError", "pulumi up on stack dev failed:\n code: 255"),
    ],
)
def test_a_failed_pulumi_up_says_what_failed_what_is_committed_and_how_to_go_back(
    ssmd: Ssmd, repo: Path, pulumi: Recorder, error: str, said: str
) -> None:
    from pulumi.automation import errors
    from pulumi.automation._cmd import CommandResult

    result_of_cli = CommandResult(
        stdout="Updating (dev)", stderr="error: the update failed: boom", code=255
    )
    pulumi.up_error = getattr(errors, error)(result_of_cli)
    pid = make_plan(ssmd)
    result = ssmd("shard", "apply", "kalshi-dev", "--plan", pid, "--no-verify")
    assert result.code == 1
    commit = git(repo, "log", "-1", "--format=%H", "--", ENV_REL)
    assert "the day roll failed: " + said in result.err
    assert f"already done: {ENV_REL}@{commit[:12]} (committed) holds the new environment" in (
        result.err
    )
    assert "to go back: `ssmd shard rollback kalshi-dev --target kubernetes`" in result.err
    assert "Traceback" not in result.err


def test_an_update_blocked_by_protection_points_at_allow_data_loss(
    ssmd: Ssmd, repo: Path, pulumi: Recorder
) -> None:
    from pulumi.automation import errors
    from pulumi.automation._cmd import CommandResult

    stderr = (
        'error: unable to delete resource "urn:...::tier1b-stream"\n'
        "as it is currently marked for protection."
    )
    pulumi.up_error = errors.CommandError(CommandResult(stdout="", stderr=stderr, code=255))
    result = ssmd("day", "roll", "kalshi-dev", "--no-verify")
    assert result.code == 1
    assert "marked for protection" in result.err
    assert "Removed shards: `ssmd shard apply|rollback --allow-data-loss`" in result.err
    assert "the environment file is unchanged" in result.err


def test_apply_allow_dirty_deploys_without_committing_and_says_so(
    ssmd: Ssmd, repo: Path, pulumi: Recorder
) -> None:
    env = repo / ENV_REL
    env.write_text(env.read_text() + "# trying something\n")
    pid = make_plan(ssmd)
    base = git(repo, "log", "-1", "--format=%H", "--", ENV_REL)
    result = ssmd("shard", "apply", "kalshi-dev", "--plan", pid, "--allow-dirty", "--no-verify")
    assert result.code == 0, result.err
    assert "(not committed: " in result.out
    assert git(repo, "log", "-1", "--format=%H", "--", ENV_REL) == base  # nothing committed
    _, kwargs = pulumi.calls[-1]
    # the update records that it deployed uncommitted content on top of that commit
    assert kwargs["message"].endswith(f"{ENV_REL}@{base[:12]}-dirty")
    assert kubernetes.commit_of_message(kwargs["message"]) == f"{base[:12]}-dirty"


def test_rollback_lists_stack_history_and_restores_the_previous_commit(
    ssmd: Ssmd, repo: Path, pulumi: Recorder
) -> None:
    original = (repo / ENV_REL).read_text()
    first = git(repo, "log", "-1", "--format=%H", "--", ENV_REL)
    pid = make_plan(ssmd)
    assert ssmd("shard", "apply", "kalshi-dev", "--plan", pid, "--no-verify").code == 0
    applied = git(repo, "log", "-1", "--format=%H", "--", ENV_REL)
    pulumi.history_rows = [
        SimpleNamespace(
            version=42,
            kind="update",
            result="succeeded",
            start_time="2025-12-01 22:00:00",
            message=f"ssmd shard apply kalshi-dev (plan {pid}): {ENV_REL}@{applied[:12]}",
            resource_changes={"create": 7},
        ),
        SimpleNamespace(
            version=41,
            kind="update",
            result="succeeded",
            start_time="2025-11-30 22:00:00",
            message=f"ssmd day roll kalshi-dev: {ENV_REL}@{first[:12]}",
            resource_changes={"same": 20},
        ),
    ]
    refused = ssmd("shard", "rollback", "kalshi-dev", "--no-verify")
    assert refused.code == 1
    assert "data loss: shard tier1b: stream ssmd-internal-tier1b is deleted" in refused.out
    assert "removes 1 shard(s) and deletes their data" in refused.err
    assert "nothing was changed" in refused.err
    assert git(repo, "log", "-1", "--format=%H", "--", ENV_REL) == applied
    assert [c for c, _ in pulumi.calls if c in ("up", "import_stack")] == ["up"]  # the apply's
    result = ssmd("shard", "rollback", "kalshi-dev", "--no-verify", "--allow-data-loss")
    assert result.code == 0, result.err
    assert "protection lifted from 2 resource(s) of the removed shards" in result.out
    assert {r["urn"].rsplit("::", 1)[1]: r["protect"] for r in pulumi.state} == {
        "tier1-stream": True,
        "tier1b-stream": False,
        "tier1b-archive": False,
    }
    assert "pulumi stack history of dev:" in result.out
    assert applied[:12] in result.out and first[:12] in result.out
    assert (repo / ENV_REL).read_text() == original
    assert git(repo, "log", "-1", "--format=%s") == (
        f"ssmd shard rollback kalshi-dev: {ENV_REL} as of {first[:12]}"
    )
    name, kwargs = pulumi.calls[-1]
    restored = git(repo, "log", "-1", "--format=%H", "--", ENV_REL)
    assert name == "up"
    assert kwargs["message"] == f"ssmd shard rollback kalshi-dev: {ENV_REL}@{restored[:12]}"


def test_rollback_to_a_revision_without_the_file(ssmd: Ssmd, repo: Path, no_pulumi: None) -> None:
    readme = git(repo, "rev-list", "--max-parents=0", "HEAD")
    result = ssmd("shard", "rollback", "kalshi-dev", "--to", readme, "--target", "local")
    assert result.code == 1
    assert f"{ENV_REL} does not exist at revision {readme}" in result.err
    unknown = ssmd("shard", "rollback", "kalshi-dev", "--to", "no-such-rev", "--target", "local")
    assert unknown.code == 1 and "unknown git revision 'no-such-rev'" in unknown.err
    first = ssmd("shard", "rollback", "kalshi-dev", "--target", "local")
    assert first.code == 1
    assert f"{ENV_REL} has no earlier commit to roll back to" in first.err


def test_rollback_refuses_a_revision_that_does_not_validate(
    ssmd: Ssmd, repo: Path, no_pulumi: None
) -> None:
    env = repo / ENV_REL
    good = env.read_text()
    env.write_text(good.replace("replicas: 1\n", "replicas: many\n"))
    git(repo, "commit", "-q", "-am", "broken")
    broken = git(repo, "rev-parse", "HEAD")
    env.write_text(good)
    git(repo, "commit", "-q", "-am", "fixed")
    result = ssmd("shard", "rollback", "kalshi-dev", "--target", "local")
    assert result.code == 1
    assert f"at {broken} ({broken[:12]}) does not validate, so it is not restored" in result.err
    assert env.read_text() == good


# ----------------------------------------------------------------------------- verification


class Publisher:
    """Publishes to some shards' subjects from its own thread until stopped."""

    def __init__(self, url: str, shards: dict[str, str]) -> None:
        self.url, self.shards = url, shards
        self.stop = threading.Event()
        self.thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)

    async def _run(self) -> None:
        nc = await nats.connect(self.url)
        js = nc.jetstream()
        n = 0
        while not self.stop.is_set():
            for shard, symbol in self.shards.items():
                n += 1
                await js.publish(
                    internal_subject(shard, "kalshi", "trade", symbol),
                    b"{}",
                    headers={"Nats-Msg-Id": f"{uuid.uuid4()}"},
                )
            await asyncio.sleep(0.05)
        await nc.close()

    def __enter__(self) -> Publisher:
        self.thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop.set()
        self.thread.join(10)


def test_day_roll_verifies_data_flows_in_every_shard(
    ssmd: Ssmd, repo: Path, pulumi: Recorder, nats_server: Any
) -> None:
    url = nats_server.url
    # the test's publisher and server are anonymous: a shared development server (the
    # verification as the admin role: test_day_roll_under_nkeys_verifies_as_the_admin)
    with (repo / ENV_REL).open("a") as handle:
        handle.write("nats: {auth: none}\n")
    git(repo, "commit", "-q", "-am", "shared dev NATS")
    env = load_environment(repo / ENV_REL)
    # a fresh server-side state for this environment's streams
    asyncio.run(_reset_streams(url, env))
    with Publisher(url, {"tier1a": "BTCUSD", "tier1": "ETHUSD"}):
        partial = ssmd("day", "roll", "kalshi-dev", "--nats-url", url, "--verify-timeout", "4")
    assert partial.code == 1
    assert "ssmd-internal-tier2" in partial.out and "NO DATA" in partial.out
    assert "no data flowed within 4s in the streams marked NO DATA" in partial.err
    assert "to go back: `ssmd shard rollback kalshi-dev --target kubernetes`" in partial.err
    with Publisher(url, {"tier1a": "BTCUSD", "tier1": "ETHUSD", "tier2": "FED-25DEC-T4.25"}):
        full = ssmd("day", "roll", "kalshi-dev", "--nats-url", url, "--verify-timeout", "30")
    assert full.code == 0, full.err
    assert "NO DATA" not in full.out
    assert "day roll done" in full.out
    name, kwargs = pulumi.calls[-1]
    commit = git(repo, "log", "-1", "--format=%H", "--", ENV_REL)
    assert (
        name == "up" and kwargs["message"] == f"ssmd day roll kalshi-dev: {ENV_REL}@{commit[:12]}"
    )


def test_day_roll_under_nkeys_verifies_as_the_admin(
    ssmd: Ssmd, repo: Path, pulumi: Recorder, tmp_path: Path
) -> None:
    """kalshi-dev has nats.auth: nkeys: the verification reads the streams as `admin`; with
    no admin seed the roll is refused before anything changes, a bad one names its file."""
    before = (repo / ENV_REL).read_bytes()
    refused = ssmd("day", "roll", "kalshi-dev", "--nats-url", "nats://127.0.0.1:4222")
    assert refused.code == 1
    assert "kalshi-dev has nats.auth: nkeys: verifying the data flow reads the streams as " in (
        refused.err
    )
    assert "give --nats-admin-seed PATH (the admin.nk that `ssmd nats auth` wrote)" in refused.err
    other = tmp_path / "client.nk"
    other.write_text(generate_user_seed() + "\n")
    wrong = ssmd("day", "roll", "kalshi-dev", "--nats-admin-seed", str(other))
    assert wrong.code == 1
    assert "is the seed of role 'client', not of 'admin'" in wrong.err
    assert (repo / ENV_REL).read_bytes() == before
    assert pulumi.calls == []


async def _reset_streams(url: str, env: Any) -> None:
    from ssmd_infra.adapters.jetstream import connect, delete_stream

    async with connect(url) as nc:
        for spec in stream_specs(env):
            await delete_stream(nc, spec.name)
    await reconcile_streams(url, stream_specs(env))


def test_apply_rollback_and_day_roll_take_the_same_roll_options() -> None:
    from typer.main import get_command

    from ssmd_infra.cli.main import app

    root = get_command(app)
    context = typer.Context(root)

    def roll_options(*path: str) -> list[tuple[str, ...]]:
        command: Any = root
        for name in path:
            command = command.get_command(context, name)
        names = [p.name for p in command.params]
        start = names.index("target")
        return [
            (p.name, *p.opts, repr(p.default), str(getattr(p, "help", "")))
            for p in command.params[start:]
        ]

    apply = roll_options("shard", "apply")
    assert [o[1] for o in apply] == [
        "--target",
        "--allow-dirty",
        "--allow-data-loss",
        "--stack",
        "--project-dir",
        "--nats-url",
        "--nats-admin-seed",
        "--verify-timeout",
        "--no-verify",
    ]
    assert roll_options("shard", "rollback") == apply
    assert roll_options("day", "roll") == apply


def test_an_unknown_target_is_a_usage_error_before_anything_is_read(ssmd: Ssmd, repo: Path) -> None:
    before = (repo / ENV_REL).read_text()
    for args in (
        ("shard", "apply", "kalshi-dev", "--plan", "nope", "--target", "moon"),
        ("shard", "rollback", "kalshi-dev", "--target", "moon"),
        ("day", "roll", "kalshi-dev", "--target", "moon"),
    ):
        result = ssmd(*args)
        assert result.code == 2, args
        assert "must be one of kubernetes, local" in result.err
    assert (repo / ENV_REL).read_text() == before
