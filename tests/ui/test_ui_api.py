"""``mergebuild ui``'s server: token and host checks, the CLI's plan and errors, builds through
the CLI's engine and locks (bit-identical outputs, refused concurrent builds), live runs."""

from __future__ import annotations

import contextlib
import io
import json
import os
import time
from pathlib import Path

from mergefile.cli.main import main as cli_main
from mergefile.store.lock import output_lock
from mergefile.store.log import BuildLog
from tests.ui.ui_support import Client, copy_demo, write_search


def cli(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli_main(list(argv))
    return code, out.getvalue(), err.getvalue()


def wait_build(client: Client, build_id: int, timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        _, snap = client.request("/api/builds")
        b = next(b for b in snap["builds"] if b["id"] == build_id)
        if b["state"] != "running":
            return b
        time.sleep(0.05)
    raise AssertionError(f"build {build_id} still running after {timeout}s")


def test_requests_without_the_token_are_refused(client: Client):
    srv = client.srv
    assert client.request("/api/recipe", token=None)[0] == 403
    assert client.request("/", token=None)[0] == 403
    assert client.request("/api/recipe", headers={"x-mergebuild-token": "wrong"}, token=None)[0] == 403
    assert client.request(f"/api/recipe?token={srv.token}x", token=None)[0] == 403
    # a state change needs the header: the token in the query (or a cookie) is not enough
    code, _ = client.request(f"/api/plan?token={srv.token}", {"text": ""}, token=None)
    assert code == 403
    code, _ = client.request("/api/save", {"text": "oops"}, token=None)
    assert code == 403 and "oops" not in (srv.session.path.read_text())
    # another Host (DNS rebinding) is refused even with the token
    assert client.request("/api/recipe", headers={"host": f"evil.example:{srv.port}"})[0] == 403
    code, body = client.request(f"/?token={srv.token}", token=None)
    assert code == 200 and b"mergebuild" in body


def test_index_turns_the_token_into_a_strict_cookie(client: Client):
    import urllib.request

    with urllib.request.urlopen(client.srv.url) as r:
        cookie = r.headers["set-cookie"]
    assert f"mergebuild_ui_{client.srv.port}={client.srv.token}" in cookie
    assert "samesite=strict" in cookie.lower() and "httponly" in cookie.lower()
    assert r.headers["content-security-policy"].startswith("default-src 'self'")
    assert r.headers["referrer-policy"] == "no-referrer"  # the tokened URL is never sent on
    req = urllib.request.Request(client.base + "/static/app.js", headers={"cookie": cookie.split(";")[0]})
    with urllib.request.urlopen(req) as r:
        assert b"EventSource" in r.read()


def test_only_the_pages_own_files_are_served(client: Client):
    assert client.request("/static/app.js")[0] == 200
    for path in (
        "/static/..%2f..%2fpyproject.toml",
        "/static/session.py",
        "/static/%2e%2e%2fapp.py",
        "/Mergefile",
        "/api/../pyproject.toml",
    ):
        assert client.request(path)[0] == 404, path


def test_graph_shows_every_target_state_and_the_clis_explanation(client: Client, demo: Path):
    code, r = client.request("/api/recipe")
    assert code == 200 and r["text"] == (demo / "Mergefile").read_text()
    view = r["view"]
    assert view["ok"]
    assert {t["name"]: t["state"] for t in view["targets"]} == {
        "out/math-code": "stale",
        "out/final": "stale",
        "out/frank": "stale",
    }
    assert {m["name"] for m in view["models"]} == {"base", "math", "code", "chat"}
    assert view["groups"] == [{"id": "group:all", "name": "all"}]
    assert ["model:" + str((demo / "models" / "base").resolve()), "target:out/math-code", "base"] in view["edges"]
    assert ["target:out/math-code", "target:out/final", ""] in view["edges"]
    assert ["target:out/frank", "group:all", ""] in view["edges"]
    _, out, _ = cli("-C", str(demo), "-n", "--explain")
    for t in view["targets"]:
        assert t["note"].endswith("tensors (missing output)")
        assert "\n".join(t["explain"]) in out  # the same lines `mergebuild -n --explain` prints


def test_a_bad_edit_is_reported_at_its_line_with_the_clis_message(client: Client, demo: Path, tmp_path: Path):
    text = (demo / "Mergefile").read_text()
    bad = text.replace("math  weight=0.6 density=0.5", "math  weight=0.6 density=", 1)
    code, view = client.request("/api/plan", {"text": bad})
    assert code == 200 and not view["ok"]
    err = view["error"]
    assert (err["line"], err["column"]) == (22, 30) and err["in_this_file"]
    (demo / "Mergefile").write_text(bad)  # the CLI on the same text says the same thing
    status, _, stderr = cli("-C", str(demo), "-f", str(demo / "Mergefile"), "-n")
    assert status == 2 and stderr.strip() == err["message"]
    (demo / "Mergefile").write_text(text)
    # a planning error (an unknown model) is located too
    code, view = client.request("/api/plan", {"text": text.replace("    code  weight=0.4", "    cod  weight=0.4", 1)})
    assert not view["ok"] and view["error"]["line"] == 23 and "did you mean 'code'" in view["error"]["message"]


def test_a_draft_is_planned_without_saving_and_save_writes_the_file(client: Client, demo: Path):
    text = (demo / "Mergefile").read_text()
    draft = text.replace("slice code[1:4]", "slice code[1:3]")
    code, view = client.request("/api/plan", {"text": draft})
    frank = next(t for t in view["targets"] if t["name"] == "out/frank")
    assert frank["tensors"] == 48  # 5 layers of 9 tensors + 3 outside the layers (was 57)
    assert (demo / "Mergefile").read_text() == text
    code, r = client.request("/api/save", {"text": draft})
    assert code == 200 and (demo / "Mergefile").read_text() == draft
    assert not (demo / "out").exists()  # saving builds nothing
    assert [f.name for f in demo.iterdir() if "mergebuild-ui" in f.name] == []


def _tree(folder: Path) -> dict[str, bytes]:
    files = {}
    for p in sorted(folder.rglob("*")):
        if p.is_file():
            data = p.read_bytes()
            if p.name == "mergebuild.json":  # file stats (inode, mtime) differ by nature; keys must not
                man = json.loads(data)
                man.pop("shards", None)
                data = json.dumps(man, sort_keys=True).encode()
            files[str(p.relative_to(folder))] = data
    return files


def test_a_page_build_gives_the_clis_files_and_its_timings(client: Client, demo: Path, tmp_path: Path, demo_models):
    code, r = client.request("/api/build", {"target": "all"})
    assert code == 202, r
    b = wait_build(client, r["build"]["id"])
    assert b["state"] == "done", b
    assert {t: (p["done"], p["total"]) for t, p in b["progress"].items()} == {
        "out/math-code": (39, 39),
        "out/final": (39, 39),
        "out/frank": (57, 57),
    }
    assert any(line.startswith("out/final: built — 39 computed") for line in b["lines"])
    other = copy_demo(tmp_path / "cli", demo_models).parent
    assert cli("-C", str(other), "--quiet")[0] == 0
    for t in ("math-code", "final", "frank"):
        mine, theirs = _tree(demo / "out" / t), _tree(other / "out" / t)
        assert mine.keys() == theirs.keys() and mine == theirs, t
    assert cli("-C", str(demo), "-q")[0] == 0  # the CLI finds the page's build up to date
    _, view = client.request("/api/plan", {"text": (demo / "Mergefile").read_text()})
    assert {t["state"] for t in view["targets"]} == {"fresh"}
    _, t = client.request("/api/target?name=out/final")
    assert t["times"]["total"] == 39 and all(r["seconds"] > 0 for r in t["times"]["tensors"])


def test_a_second_build_of_a_target_in_progress_is_refused(client: Client, demo: Path):
    code, first = client.request("/api/build", {"target": "out/final"})
    assert code == 202
    code, second = client.request("/api/build", {"target": "out/final"})
    assert code == 409 and "is being built from this page" in second["error"]
    code, third = client.request("/api/build", {"target": "out/math-code"})  # a prerequisite of the running one
    assert code == 409
    assert wait_build(client, first["build"]["id"])["state"] == "done"


def test_a_build_held_by_another_process_is_refused_as_on_the_cli(client: Client, demo: Path):
    client.request("/api/recipe")  # plans once: the page knows the output folders
    with output_lock(demo / "out" / "frank"):
        code, r = client.request("/api/build", {"target": "all"})
        assert code == 409
        assert r["error"] == (
            f"mergebuild: error: {demo / 'out' / 'frank'} is being built by another mergebuild "
            f"(pid {os.getpid()}) (wait for it to finish, or build another target)"
        )
        _, snap = client.request("/api/builds")
        assert snap["building"] == {"out/frank": os.getpid()}
        status, _, stderr = cli("-C", str(demo), "--no-wait", "--quiet", "out/frank")  # the CLI agrees
        assert status == 2 and "is being built by another mergebuild" in stderr
    _, snap = client.request("/api/builds")
    assert snap["building"] == {}
    assert client.request("/api/build", {"target": "nope"})[1]["error"].startswith(
        "mergebuild: error: unknown target 'nope'"
    )


def test_cancel_stops_a_build_and_leaves_the_output_untouched(client: Client, demo: Path):
    code, r = client.request("/api/build", {"target": "out/frank"})
    build_id = r["build"]["id"]
    client.request("/api/cancel", {"id": build_id})
    b = wait_build(client, build_id)
    assert b["state"] == "cancelled" and "cancelled from the page" in b["error"]
    assert not (demo / "out" / "frank").exists()
    code, r = client.request("/api/build", {"target": "out/frank"})  # the lock was released
    assert code == 202 and wait_build(client, r["build"]["id"])["state"] == "done"
    assert client.request("/api/cancel", {"id": 99})[0] == 400


def test_a_build_logged_by_another_process_shows_up_live(client: Client, demo: Path):
    log = BuildLog(demo / "cache" / "logs")
    with log.start_run(["-C", str(demo), "out/frank"]) as run:
        run.record(target="out/frank", tensor="model.norm.weight", key="k1", status="computed", seconds=0.1)
        run.record(target="out/frank", tensor="lm_head.weight", key="k2", status="hit")
        _, snap = client.request("/api/builds")
        live = [r for r in snap["runs"] if r["run_id"] == run.run_id]
        assert live and live[0]["tensors"] == {"out/frank": 2} and live[0]["argv"][-1] == "out/frank"
    _, snap = client.request("/api/builds")
    assert all(r["run_id"] != run.run_id for r in snap["runs"])  # finished: no longer live


def test_events_stream_the_live_state(client: Client):
    import urllib.request

    req = urllib.request.Request(client.base + "/api/events", headers={"x-mergebuild-token": client.srv.token})
    with urllib.request.urlopen(req, timeout=10) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        assert r.readline() == b"event: status\n"
        snap = json.loads(r.readline().removeprefix(b"data: "))
    assert set(snap) == {"builds", "building", "failed", "runs", "evolve"}


def test_heat_map_shows_resolved_gradients(client: Client):
    code, t = client.request("/api/target?name=out/math-code")
    assert code == 200 and t["state"] == "stale" and t["text"].startswith("out/math-code: ties(base=base) {")
    heat = t["heat"]
    assert heat["columns"] == ["pre", "L0", "L1", "L2", "L3", "post"]
    q = heat["kinds"].index("model.layers.*.self_attn.q_proj.weight")
    row = heat["params"]["base: weight"][q][1:5]  # weight[self_attn] = [0.3, 0.7]: the base's default
    assert row[0] == 0.3 and abs(row[3] - 0.7) < 1e-9 and row == sorted(row)
    mlp = heat["kinds"].index("model.layers.*.mlp.up_proj.weight")
    assert heat["params"]["base: weight"][mlp][1:5] == [None] * 4  # the filter: attention only
    assert heat["params"]["math: weight"][q][1:5] == [0.6] * 4
    assert client.request("/api/target?name=out/nope")[0] == 400


def test_cache_view_matches_cache_stats_and_gc(client: Client, demo: Path):
    code, r = client.request("/api/build", {"target": "out/math-code"})
    wait_build(client, r["build"]["id"])
    _, c = client.request("/api/cache")
    _, out, _ = cli("-C", str(demo), "cache", "stats", "--json")
    stats = json.loads(out)
    assert (c["entries"], c["volume_bytes"]) == (stats["entries"], stats["volume_bytes"])
    assert c["totals"]["computed"] == 39 and c["by_kind"]["tensor"]["entries"] == 39
    assert c["gc_preview"]["would_drop"] == 0
    text = (demo / "Mergefile").read_text()
    client.request("/api/save", {"text": text.replace("math  weight=0.6", "math  weight=0.5", 1)})
    _, c = client.request("/api/cache")
    _, out, _ = cli("-C", str(demo), "cache", "gc", "--dry-run", "--json")
    assert c["gc_preview"]["would_drop"] == json.loads(out)["dropped"] > 0
    _, log = client.request(f"/api/log?run={c['runs'][-1]['run_id']}")
    assert sum(1 for rec in log["records"] if rec.get("status") == "computed") == 39


def test_evolve_view_shows_the_score_curve_best_recipe_and_genes_live(client: Client, demo: Path):
    assert client.request("/api/evolve")[1] == {"folders": [], "folder": None}
    folder = demo / "cache" / "evolve" / "out_best-0123456789ab"
    write_search(folder, [0.2, 0.5, 0.4])
    _, e = client.request("/api/evolve")
    assert e["folder"] == str(folder.resolve()) and e["evaluations"] == 3
    assert [(c["score"], c["best"]) for c in e["curve"]] == [(0.2, 0.2), (0.5, 0.5), (0.4, 0.5)]
    assert e["best"]["n"] == 2 and e["best"]["genes"] == {"math.weight": [0.1, 0.5], "code.weight": [0.5, 0.9]}
    assert e["best_recipe"].startswith("# evaluation 2")
    _, before = client.request("/api/builds")
    write_search(folder, [0.7])  # one more evaluation arrives
    _, after = client.request("/api/builds")
    assert after["evolve"][str(folder.resolve())] > before["evolve"][str(folder.resolve())]
    _, e = client.request("/api/evolve")
    assert e["evaluations"] == 4 and e["curve"][-1]["best"] == 0.7
    code, r = client.request(f"/api/evolve?folder={demo}")  # only search folders are readable
    assert code == 400 and "is not an evolve folder" in r["error"]


YAML = """merge_method: linear
models:
  - model: models/math
    parameters:
      weight: 0.5
  - model: models/code
    parameters:
      weight: 0.5
dtype: float32
"""


def test_a_mergekit_config_is_seen_edited_and_built_as_with_config(demo: Path, tmp_path: Path, demo_models):
    from mergefile.ui.server import UiServer
    from mergefile.ui.session import RecipeSession

    (demo / "merge.yml").write_text(YAML)
    srv = UiServer(RecipeSession(demo / "merge.yml", demo / "cache", config_target="out/linear")).start()
    try:
        client = Client(srv)
        _, r = client.request("/api/recipe")
        assert r["config"] and [t["name"] for t in r["view"]["targets"]] == ["out/linear"]
        _, view = client.request(
            "/api/plan", {"text": YAML.replace("weight: 0.5\n  - model", "weight: [0.5\n  - model", 1)}
        )
        assert not view["ok"] and view["error"]["line"] == 6 and view["error"]["in_this_file"]
        code, b = client.request("/api/build", {"target": "out/linear"})
        assert wait_build(client, b["build"]["id"])["state"] == "done"
    finally:
        srv.stop()
    other = copy_demo(tmp_path / "cli", demo_models).parent
    (other / "merge.yml").write_text(YAML)
    assert cli("-C", str(other), "--quiet", "--config", "merge.yml", "out/linear")[0] == 0
    assert _tree(demo / "out" / "linear") == _tree(other / "out" / "linear")


def test_a_failed_build_marks_its_target_failed_until_it_builds(client: Client, demo: Path):
    text = (demo / "Mergefile").read_text()
    client.request("/api/save", {"text": text.replace('model chat = "models/chat"', 'model chat = "models/gone"')})
    code, r = client.request("/api/build", {"target": "out/final"})
    assert code == 202  # the saved recipe parses; planning it fails in the build, as on the CLI
    b = wait_build(client, r["build"]["id"])
    status, _, stderr = cli("-C", str(demo), "-f", str(demo / "Mergefile"), "--quiet", "out/final")
    assert b["state"] == "failed" and status == 2 and b["error"] == stderr.strip()
    _, snap = client.request("/api/builds")
    assert snap["failed"] == {"out/final": b["error"]}
    client.request("/api/save", {"text": text})
    code, r = client.request("/api/build", {"target": "out/final"})
    assert wait_build(client, r["build"]["id"])["state"] == "done"
    assert client.request("/api/builds")[1]["failed"] == {}


def test_a_terminal_build_that_fails_shows_failed_until_a_build_succeeds(client: Client, demo: Path, monkeypatch):
    """The run log's summary names the failed target and why; the page reads it (any process)."""
    from mergefile.io.reader import TensorReader

    def broken(self, info):
        raise OSError("disk read error (injected)")

    args = ("-C", str(demo), "-f", str(demo / "Mergefile"), "--quiet", "-B", "out/frank")
    with monkeypatch.context() as m:
        m.setattr(TensorReader, "get", broken)
        status, _, stderr = cli(*args)
    assert status == 1 and "Traceback" not in stderr and "mergebuild: error: disk read error" in stderr
    summary = BuildLog(demo / "cache" / "logs").read()[-1]
    assert "disk read error" in summary["failed"]["out/frank"]
    _, snap = client.request("/api/builds")
    assert "disk read error" in snap["failed"]["out/frank"]
    assert cli(*args)[0] == 0
    assert "out/frank" not in client.request("/api/builds")[1]["failed"]
